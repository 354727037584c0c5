"""The audit trail's JSON-lines file: opened at start, or a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tcpft.audit import Audit
from tcpft.errors import UsageError


def test_events_are_appended_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit = Audit(path)
    audit.event("login ok", user="alice", addr="127.0.0.1")
    audit.close()
    record = json.loads(path.read_text(encoding="utf-8"))
    assert record["event"] == "login ok" and record["user"] == "alice"


@pytest.mark.parametrize("where", ["a directory", "a missing parent"])
def test_a_path_that_cannot_be_opened_is_a_usage_error(tmp_path: Path, where: str) -> None:
    path = tmp_path if where == "a directory" else tmp_path / "no" / "audit.jsonl"
    with pytest.raises(UsageError) as info:
        Audit(path)
    assert f"cannot open the audit file {path}: " in str(info.value)
