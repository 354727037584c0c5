"""Wire path names, shared by server and client.

A wire path is relative, ``/``-separated UTF-8 text such as ``docs/a.txt``; the empty
string names the root of the served directory. :func:`split_path` is the one gate every
name from the network goes through: it refuses anything that could climb out of a
directory (``..``, absolute paths, backslashes), anything a terminal could interpret
(control characters), and anything over the limits of :mod:`tcpft.limits`.

:func:`printable` makes any name safe to show on a terminal, and :func:`local_target`
tells the client where a received file lands under its destination directory.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from tcpft.errors import InvalidName, LocalFileError, RemoteProtocolError
from tcpft.limits import MAX_NAME_BYTES, MAX_PATH_BYTES

__all__ = [
    "PARTIAL_SUFFIX",
    "download_partial",
    "is_partial_name",
    "join_path",
    "local_target",
    "partial_name",
    "printable",
    "split_path",
]

#: Suffix of a file still being received. Listings never show such files.
PARTIAL_SUFFIX = ".tcpft-part"

#: Characters refused in a wire path: C0 controls (NUL included), DEL and C1 controls.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

#: Characters :func:`printable` escapes: the controls above, line and paragraph
#: separators, every bidi control (the marks ALM, LRM and RLM, embeddings and
#: overrides, isolates), and lone surrogates (``os.listdir`` gives those for bytes
#: that are not UTF-8).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]"
)

#: Longest part of a name shown inside an error message.
_SHOWN_CHARS = 200


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(name: str) -> str:
    """Return ``name`` with every character a terminal could act on escaped.

    C0 and C1 controls and DEL become ``\\xNN``; U+2028/U+2029, the bidi controls
    (U+061C, U+200E, U+200F, U+202A-U+202E and U+2066-U+2069) and lone surrogates
    become ``\\uNNNN``. Other
    text, backslashes included, is left as it is. Never raises.
    """
    return _UNSAFE.sub(_escape, name)


def _shown(name: str) -> str:
    """A printable, length-capped form of ``name`` for error messages."""
    text = printable(name)
    if len(text) > _SHOWN_CHARS:
        return text[:_SHOWN_CHARS] + "..."
    return text


def split_path(path: str, *, allow_root: bool = False) -> tuple[str, ...]:
    """Validate a wire path and return its components.

    ``""`` is the root: it gives ``()`` when ``allow_root`` is true.

    Raises:
        InvalidName: ``path`` is empty (and ``allow_root`` is false), is not encodable
            as UTF-8 (lone surrogates), is longer than ``MAX_PATH_BYTES``, holds a
            control character or DEL, is absolute, holds a backslash, has an empty,
            ``.`` or ``..`` component, or has a component longer than
            ``MAX_NAME_BYTES`` (all lengths in UTF-8 bytes).
    """
    if path == "":
        if allow_root:
            return ()
        raise InvalidName("empty path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidName(f"path is not valid UTF-8: {_shown(path)}") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise InvalidName(f"path is longer than {MAX_PATH_BYTES} bytes: {_shown(path)}")
    if _CONTROL.search(path):
        raise InvalidName(f"path contains a control character: {_shown(path)}")
    if path.startswith("/"):
        raise InvalidName(f"path must be relative: {_shown(path)}")
    if "\\" in path:
        raise InvalidName(f"path contains a backslash: {_shown(path)}")
    parts = tuple(path.split("/"))
    for part in parts:
        if part == "":
            raise InvalidName(f"path has an empty component: {_shown(path)}")
        if part in (".", ".."):
            raise InvalidName(f"path has a '{part}' component: {_shown(path)}")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidName(
                f"path component is longer than {MAX_NAME_BYTES} bytes: {_shown(path)}"
            )
    return parts


def join_path(parts: Iterable[str]) -> str:
    """Join components into a wire path; ``()`` gives ``""`` (the root).

    Raises:
        InvalidName: the result would not split back into the same components, or
            breaks a rule of :func:`split_path`.
    """
    parts = tuple(parts)
    path = "/".join(parts)
    if split_path(path, allow_root=True) != parts:
        raise InvalidName(f"not a valid sequence of path components: {_shown(path)}")
    return path


def is_partial_name(name: str) -> bool:
    """Say whether ``name`` (a component or a path) names a partial file."""
    return name.endswith(PARTIAL_SUFFIX)


def partial_name(name: str) -> str:
    """Return the name of the partial file kept beside ``name`` while it is received.

    It is ``.<name>.tcpft-part``, hidden and ending in :data:`PARTIAL_SUFFIX`. When
    that would exceed ``MAX_NAME_BYTES`` (a long ``name``), a name derived from the
    SHA-256 of ``name`` is used instead, so the same name always gives the same
    partial (resume depends on it). ``name`` is one component, already validated.
    """
    candidate = f".{name}{PARTIAL_SUFFIX}"
    if len(candidate.encode("utf-8")) <= MAX_NAME_BYTES:
        return candidate
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return f".{digest}{PARTIAL_SUFFIX}"


def download_partial(target: Path) -> Path:
    """Return where a client receives the file that will be ``target``.

    It is ``NAME.tcpft-part`` beside ``target``. When that would exceed
    ``MAX_NAME_BYTES`` (a long ``NAME``), a name derived from the SHA-256 of ``NAME``
    is used instead, so that the same target always gives the same partial (resume
    depends on it).
    """
    candidate = target.name + PARTIAL_SUFFIX
    if len(os.fsencode(candidate)) <= MAX_NAME_BYTES:
        return target.with_name(candidate)
    digest = hashlib.sha256(os.fsencode(target.name)).hexdigest()
    return target.with_name(digest + PARTIAL_SUFFIX)


def local_target(dest_dir: Path, remote_path: str) -> Path:
    """Return where the file with wire path ``remote_path`` lands under ``dest_dir``.

    The result is ``dest_dir`` joined with the components of ``remote_path``. It is
    refused unless, with every symbolic link that exists now resolved, it lies
    strictly inside ``dest_dir`` (resolved as well). Nothing is created.

    Raises:
        RemoteProtocolError: ``remote_path`` breaks a rule of :func:`split_path`, is
            the root, or leads outside ``dest_dir`` (for example through a
            symbolic link in ``dest_dir`` that points elsewhere).
        LocalFileError: the path cannot be resolved (a symbolic link loop).
    """
    try:
        parts = split_path(remote_path)
    except InvalidName as exc:
        raise RemoteProtocolError(
            f"server sent an unsafe name: {_shown(remote_path)} ({exc.message})"
        ) from None
    target = dest_dir.joinpath(*parts)
    try:
        base = dest_dir.resolve()
        resolved = target.resolve()
    except (OSError, RuntimeError) as exc:
        raise LocalFileError(f"cannot resolve {_shown(str(target))}: {exc}") from exc
    if resolved == base or not resolved.is_relative_to(base):
        raise RemoteProtocolError(
            f"server sent an unsafe name: {_shown(remote_path)} "
            "(it leads outside the destination directory)"
        )
    return target
