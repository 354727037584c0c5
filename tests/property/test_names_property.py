"""Property tests of tcpft.names over arbitrary text."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tcpft.errors import InvalidName, RemoteProtocolError
from tcpft.limits import MAX_NAME_BYTES, MAX_PATH_BYTES
from tcpft.names import join_path, local_target, printable, split_path

# Text biased towards the characters that matter: separators, dots, controls.
_tricky = st.sampled_from(
    ["/", ".", "..", "\\", "\x00", "\x1b", "\x85", "\u202e", "\udc80", "é", "out", "in", "self"]
)
paths = st.one_of(
    st.text(),
    st.lists(st.one_of(_tricky, st.text(max_size=4)), max_size=12).map("".join),
)


@given(paths)
@example("")
@example("a/../b")
@example("x" * 300)
def test_split_path_refuses_or_round_trips(path: str) -> None:
    try:
        parts = split_path(path, allow_root=True)
    except InvalidName:
        return
    assert join_path(parts) == path
    assert len(path.encode("utf-8")) <= MAX_PATH_BYTES
    for part in parts:
        assert part not in ("", ".", "..")
        assert "/" not in part
        assert "\\" not in part
        assert len(part.encode("utf-8")) <= MAX_NAME_BYTES
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in part)


@pytest.fixture(scope="module")
def dest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A destination holding symlinks that lead outside, inside, and to itself."""
    top = tmp_path_factory.mktemp("names")
    (top / "outside").mkdir()
    dest = top / "dest"
    (dest / "in").mkdir(parents=True)
    (dest / "out").symlink_to(top / "outside")
    (dest / "in" / "out").symlink_to("../../outside")
    (dest / "self").symlink_to(".")
    (dest / "in" / "self").symlink_to("..")
    return dest


@given(path=paths)
@example(path="out/x")
@example(path="in/out/x")
@example(path="self")
@example(path="in/self/x")
def test_local_target_stays_inside(dest: Path, path: str) -> None:
    try:
        target = local_target(dest, path)
    except RemoteProtocolError:
        return
    resolved = target.resolve()
    base = dest.resolve()
    assert resolved != base
    assert resolved.is_relative_to(base)


@given(st.text())
def test_printable_is_always_encodable(text: str) -> None:
    printable(text).encode("utf-8")
