"""The audit trail: one line per login and per transfer, never a password.

Lines go to the ``tcpft.audit`` logger as ``key=value`` pairs with values quoted when
they hold anything unusual, e.g.::

    login failed user="bob" addr=203.0.113.7
    transfer get user=alice addr=127.0.0.1 path="a.iso" bytes=1048576 digest=blake3:ab12.. result=ok

A fail2ban filter matches ``login failed .* addr=<HOST>``. With a JSON path set, the
same events are also appended there as JSON lines.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from .errors import UsageError
from .names import printable

logger = logging.getLogger("tcpft.audit")

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:@/")


def _value(v: object) -> str:
    text = str(v)
    if text and all(ch in _PLAIN for ch in text):
        return text
    return '"' + printable(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Audit:
    """Writes audit events to the log and, optionally, to a JSON-lines file."""

    def __init__(self, json_path: Path | None = None) -> None:
        """Open ``json_path`` for appending, if given.

        Raises:
            UsageError: it cannot be opened (a directory, a missing parent, no permission).
        """
        try:
            self._json = json_path.open("a", encoding="utf-8") if json_path else None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise UsageError(f"cannot open the audit file {json_path}: {why}") from None
        self._lock = threading.Lock()
        self._failing = False

    def event(self, kind: str, **fields: object) -> None:
        """Record one event; ``kind`` is e.g. ``"login ok"`` or ``"transfer get"``.

        A JSON file that cannot be written (a full disk) does not stop the server: the
        failure is logged once, as an error, and again when writing works again. The
        logger's line is written either way.
        """
        line = " ".join([kind, *(f"{k}={_value(v)}" for k, v in fields.items())])
        logger.info("%s", line)
        if self._json is not None:
            record = {"time": time.time(), "event": kind, **fields}
            with self._lock:
                try:
                    self._json.write(json.dumps(record, default=str) + "\n")
                    self._json.flush()
                except OSError as exc:
                    if not self._failing:
                        logger.error(
                            "cannot write the audit file: %s; its records are lost until "
                            "it can be written again", exc.strerror or exc,
                        )  # fmt: skip
                    self._failing = True
                    return
                if self._failing:
                    logger.warning("the audit file is written again")
                    self._failing = False

    def close(self) -> None:
        """Close the JSON file; what it could not take (a full disk) is lost, as logged."""
        if self._json is not None:
            json_file, self._json = self._json, None
            try:
                json_file.close()
            except OSError as exc:
                logger.error("cannot write the audit file: %s", exc.strerror or exc)
