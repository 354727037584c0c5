"""tcpft.partials on real files: a locked partial file is the transfer's own."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from tcpft import partials
from tcpft.partials import open_partial

FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def test_a_new_partial_is_created_private_and_locked(tmp_path: Path) -> None:
    got = open_partial(str(tmp_path / "p"), FLAGS)
    assert got is not None
    fd, replaced = got
    try:
        assert not replaced
        st = os.fstat(fd)
        assert st.st_nlink == 1 and st.st_mode & 0o777 == 0o600
        assert open_partial(str(tmp_path / "p"), FLAGS) is None  # held: not a second time
    finally:
        os.close(fd)
    got = open_partial(str(tmp_path / "p"), FLAGS)  # released with its descriptor
    assert got is not None
    os.close(got[0])


def test_an_earlier_attempt_is_kept(tmp_path: Path) -> None:
    (tmp_path / "p").write_bytes(b"half")
    got = open_partial(str(tmp_path / "p"), FLAGS)
    assert got is not None
    assert got[1] is False and os.fstat(got[0]).st_size == 4
    os.close(got[0])


def test_a_partial_linked_to_another_file_is_not_written_into(tmp_path: Path) -> None:
    """A publish cut between its link and its unlink leaves the partial as a second
    link to the published file: truncating it would truncate that file."""
    published = tmp_path / "final"
    published.write_bytes(b"verified content")
    os.link(published, tmp_path / "p")
    got = open_partial(str(tmp_path / "p"), FLAGS)
    assert got is not None
    fd, replaced = got
    try:
        assert replaced
        os.ftruncate(fd, 0)
        os.write(fd, b"new")
        assert os.fstat(fd).st_ino != published.stat().st_ino
    finally:
        os.close(fd)
    assert published.read_bytes() == b"verified content"
    assert published.stat().st_nlink == 1
    assert (tmp_path / "p").read_bytes() == b"new"


def test_a_partial_published_while_it_was_being_locked_is_opened_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened just before its holder published it, the lock comes on what is now the
    published file: that one is left alone and a new partial made."""
    partial, final = tmp_path / "p", tmp_path / "final"
    partial.write_bytes(b"verified content")
    real_flock = fcntl.flock
    published: list[bool] = []

    def flock_after_publish(fd: int, op: int) -> None:
        if not published:  # the holder publishes between our open and our lock
            os.link(partial, final)
            os.unlink(partial)
            published.append(True)
        real_flock(fd, op)

    monkeypatch.setattr(partials.fcntl, "flock", flock_after_publish)
    got = open_partial(str(partial), FLAGS)
    assert got is not None
    fd, replaced = got
    try:
        assert replaced and os.fstat(fd).st_size == 0
        assert os.fstat(fd).st_ino != final.stat().st_ino
    finally:
        os.close(fd)
    assert final.read_bytes() == b"verified content"


def test_relative_to_a_directory_descriptor(tmp_path: Path) -> None:
    (tmp_path / "final").write_bytes(b"x")
    os.link(tmp_path / "final", tmp_path / ".p")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        got = open_partial(".p", FLAGS, dir_fd=dfd)
        assert got is not None and got[1]
        os.close(got[0])
    finally:
        os.close(dfd)
    assert (tmp_path / "final").stat().st_nlink == 1
