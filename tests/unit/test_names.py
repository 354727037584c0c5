"""Unit tests of tcpft.names: wire path validation, display escaping, client targets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tcpft.errors import InvalidName, RemoteProtocolError
from tcpft.limits import MAX_NAME_BYTES, MAX_PATH_BYTES
from tcpft.names import (
    PARTIAL_SUFFIX,
    is_partial_name,
    join_path,
    local_target,
    partial_name,
    printable,
    split_path,
)

# --- split_path ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ("a",)),
        ("docs/a.txt", ("docs", "a.txt")),
        ("a/b/c", ("a", "b", "c")),
        (".hidden", (".hidden",)),
        ("...", ("...",)),
        ("a..b/..c", ("a..b", "..c")),
        ("with space/ é ü 日本", ("with space", " é ü 日本")),
        ("emoji-😀", ("emoji-😀",)),
        ("é" * 127, ("é" * 127,)),  # 254 bytes
        ("x" * MAX_NAME_BYTES, ("x" * MAX_NAME_BYTES,)),
        ("é" * 127 + "x", ("é" * 127 + "x",)),  # 255 bytes, multi-byte
        ("😀" * 63 + "abc", ("😀" * 63 + "abc",)),  # 252 + 3 = 255 bytes
    ],
)
def test_split_path_accepts(path: str, parts: tuple[str, ...]) -> None:
    assert split_path(path) == parts
    assert join_path(parts) == path


def test_split_path_root() -> None:
    assert split_path("", allow_root=True) == ()
    with pytest.raises(InvalidName, match="empty"):
        split_path("")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("..", "'..'"),
        (".", "'.'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("../etc/passwd", "'..'"),
        ("a/./b", "'.'"),
        ("/etc/passwd", "relative"),
        ("/", "relative"),
        ("a\\b", "backslash"),
        ("..\\..\\windows", "backslash"),
        ("a//b", "empty component"),
        ("a/", "empty component"),
        ("a/b/", "empty component"),
        ("a\x00b", "control"),
        ("\x00", "control"),
        ("\x1b[31m", "control"),
        ("a/\x1b]0;title\x07", "control"),
        ("line\nbreak", "control"),
        ("tab\there", "control"),
        ("cr\r", "control"),
        ("del\x7f", "control"),
        ("c1\x85", "control"),
        ("c1\x9b31m", "control"),
        ("x\x80", "control"),
        ("x\x9f", "control"),
        ("x" * (MAX_NAME_BYTES + 1), "component is longer"),
        ("é" * 128, "component is longer"),  # 256 bytes in 128 characters
        ("d/" + "😀" * 64, "component is longer"),  # 256 bytes in 64 characters
        ("lone\udc80surrogate", "UTF-8"),
        ("\ud800", "UTF-8"),
    ],
)
def test_split_path_refuses(path: str, why: str) -> None:
    with pytest.raises(InvalidName, match=why):
        split_path(path)
    with pytest.raises(InvalidName):
        split_path(path, allow_root=True)


def _long_path(total: int) -> str:
    """A valid path of exactly ``total`` UTF-8 bytes, with multi-byte components."""
    part = "é" * 100  # 200 bytes
    parts: list[str] = []
    used = 0
    while used + 201 + 10 < total:
        parts.append(part)
        used += 201
    parts.append("x" * (total - used))
    path = "/".join(parts)
    assert len(path.encode("utf-8")) == total
    return path


def test_split_path_whole_path_limit() -> None:
    at_limit = _long_path(MAX_PATH_BYTES)
    assert join_path(split_path(at_limit)) == at_limit
    with pytest.raises(InvalidName, match=f"longer than {MAX_PATH_BYTES}"):
        split_path(_long_path(MAX_PATH_BYTES + 1))


def test_split_path_whole_path_limit_counts_bytes_not_chars() -> None:
    path = "/".join(["é" * 100] * 20)  # 2019 chars, 4019 bytes: fits
    split_path(path)
    with pytest.raises(InvalidName, match="longer than"):
        split_path(path + "/" + "é" * 50)  # 4120 bytes, 2070 chars


def test_error_message_is_printable_and_capped() -> None:
    with pytest.raises(InvalidName) as info:
        split_path("\x1b[2J" + "x" * 5000)
    assert "\x1b" not in info.value.message
    assert len(info.value.message) < 400


# --- join_path -------------------------------------------------------------------


def test_join_path() -> None:
    assert join_path(()) == ""
    assert join_path(["a", "b"]) == "a/b"
    assert join_path(iter(("x",))) == "x"


@pytest.mark.parametrize("parts", [("a/b",), ("",), ("..",), ("a", "."), ("\x1b",)])
def test_join_path_refuses(parts: tuple[str, ...]) -> None:
    with pytest.raises(InvalidName):
        join_path(parts)


# --- printable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain.txt", "plain.txt"),
        ("日本語 é", "日本語 é"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
        ("\x00\x01\x1f", "\\x00\\x01\\x1f"),
        ("a\nb\rc\td", "a\\x0ab\\x0dc\\x09d"),
        ("\x7f", "\\x7f"),
        ("\x85\x9b", "\\x85\\x9b"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("evil\u202egnp.exe", "evil\\u202egnp.exe"),
        ("\u202a\u202b\u202c\u202d", "\\u202a\\u202b\\u202c\\u202d"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("a\u061cb\u200ec\u200fd", "a\\u061cb\\u200ec\\u200fd"),
        ("bad\udcffbyte", "bad\\udcffbyte"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_printable(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_leaves_no_unsafe_character() -> None:
    every = "".join(chr(c) for c in range(0x3000) if not 0xD800 <= c <= 0xDFFF) + "\udc80"
    out = printable(every)
    for ch in out:
        code = ord(ch)
        assert not (code < 0x20 or 0x7F <= code <= 0x9F), hex(code)
        assert not (0x2028 <= code <= 0x202E or 0x2066 <= code <= 0x2069), hex(code)
        assert code not in (0x061C, 0x200E, 0x200F), hex(code)  # the bidi marks
        assert not 0xD800 <= code <= 0xDFFF, hex(code)
    out.encode("utf-8")  # always encodable, so always writable to a terminal


# --- partial names ---------------------------------------------------------------


def test_partial_names() -> None:
    assert PARTIAL_SUFFIX == ".tcpft-part"
    assert partial_name("a.txt") == ".a.txt.tcpft-part"
    assert is_partial_name(partial_name("a.txt"))
    assert is_partial_name("dir/.x.tcpft-part")
    assert not is_partial_name("a.txt")
    assert not is_partial_name("a.tcpft-part.txt")


def test_partial_name_of_a_long_name_stays_within_the_limit() -> None:
    long_a = "a" * MAX_NAME_BYTES
    long_b = "é" * 127
    for name in (long_a, long_b):
        partial = partial_name(name)
        assert len(partial.encode("utf-8")) <= MAX_NAME_BYTES
        assert is_partial_name(partial)
        assert partial.startswith(".")
        assert split_path(partial) == (partial,)
        assert partial_name(name) == partial  # stable, so resume finds it
    assert partial_name(long_a) != partial_name(long_b)


# --- local_target ----------------------------------------------------------------


def test_local_target_inside(tmp_path: Path) -> None:
    assert local_target(tmp_path, "a.txt") == tmp_path / "a.txt"
    assert local_target(tmp_path, "sub/dir/a.txt") == tmp_path / "sub" / "dir" / "a.txt"
    assert not (tmp_path / "sub").exists()  # nothing created


def test_local_target_follows_symlinks_that_stay_inside(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to("real")
    assert local_target(tmp_path, "alias/f") == tmp_path / "alias" / "f"


@pytest.mark.parametrize(
    "remote",
    ["", "..", "../x", "a/../../x", "/etc/passwd", "a\\..\\b", "a//b", "\x1b[31m", "a\x00"],
)
def test_local_target_refuses_unsafe_names(tmp_path: Path, remote: str) -> None:
    with pytest.raises(RemoteProtocolError, match="server sent an unsafe name") as info:
        local_target(tmp_path, remote)
    assert "\x1b" not in info.value.message
    assert "\x00" not in info.value.message


def test_local_target_refuses_symlinked_dir_pointing_outside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    with pytest.raises(RemoteProtocolError, match="outside"):
        local_target(dest, "link/evil.txt")
    assert os.listdir(outside) == []


def test_local_target_refuses_symlinked_file_pointing_outside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "f").symlink_to(tmp_path / "victim")
    with pytest.raises(RemoteProtocolError, match="outside"):
        local_target(dest, "f")


def test_local_target_refuses_a_symlink_to_dest_itself(tmp_path: Path) -> None:
    (tmp_path / "self").symlink_to(".")
    with pytest.raises(RemoteProtocolError):
        local_target(tmp_path, "self")


def test_local_target_with_symlinked_dest_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "dest").symlink_to(real)
    assert local_target(tmp_path / "dest", "a") == tmp_path / "dest" / "a"
