"""The client against a server that lies: bad names, endless listings, false verdicts.

Each test scripts a :class:`HostileServer` (plaintext, on 127.0.0.1) and checks that
the client refuses what it must, with a clear error and nothing left in the wrong
place, never a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import tcpft.client
from tcpft.client import Session, connect
from tcpft.errors import AlreadyExists, IntegrityError, RemoteProtocolError, TimeoutExpired
from tcpft.integrity import BLAKE3, new_hasher
from tcpft.limits import RESUME_BLOCK_SIZE
from tcpft.messages import (
    Ack,
    Cancel,
    Data,
    Done,
    Entry,
    FileHeader,
    Get,
    ListEnd,
    ListEntries,
    ListRequest,
    Message,
    Put,
    PutReady,
)

from .hostile_server import HostileServer, Respond, nothing
from .rawclient import frame

pytestmark = pytest.mark.timeout(30)


def listing(*paths: str, dirs: tuple[str, ...] = ()) -> bytes:
    entries = [Entry(p, False, 1, 0) for p in paths] + [Entry(d, True, 0, 0) for d in dirs]
    return frame(ListEntries(tuple(entries))) + frame(ListEnd())


@pytest.fixture
def hostile() -> Iterator[list[HostileServer]]:
    servers: list[HostileServer] = []
    yield servers
    for server in servers:
        server.join()


def session(
    servers: list[HostileServer],
    respond: Respond = nothing,
    *,
    listing: bytes | None = None,
    timeout: float = 5.0,
) -> Session:
    server = HostileServer(respond, listing=listing)
    servers.append(server)
    return connect(
        "127.0.0.1", server.port, user="x", password="y", plaintext=True, timeout=timeout
    )


def whole_file(path: str, content: bytes) -> bytes:
    """FILE, DATA and DONE of ``content``, as an honest server of version 4 sends them."""
    hasher = new_hasher(BLAKE3)
    hasher.update(content)
    return (
        frame(FileHeader(path, len(content), 0))
        + frame(Data(content))
        + frame(Done(hasher.digest()))
    )


# --- listings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "why"),
    [
        (("../secret",), "bad name"),
        (("/etc/passwd",), "bad name"),
        (("a\x1b[2Jb",), "bad name"),
        (("a//b",), "bad name"),
        (("sub/inner",), "holds sub/inner"),  # not directly in the root
        (("x.txt", "x.txt"), "twice"),
    ],
)
def test_a_login_listing_with_a_bad_name_is_refused(
    hostile: list[HostileServer], names: tuple[str, ...], why: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=why) as info:
        session(hostile, listing=listing(*names))
    assert "\x1b" not in str(info.value)


def _answer_lists(body: bytes) -> Respond:
    def respond(msg: Message) -> bytes:
        return body if isinstance(msg, ListRequest) else b""

    return respond


@pytest.mark.parametrize(
    ("names", "recursive"),
    [
        (("other/x",), False),  # outside the directory asked for
        (("sub",), False),  # the directory itself
        (("subway/x",), True),  # only looks inside
        (("sub/a/b",), False),  # deeper, though not asked
    ],
)
def test_a_listing_must_stay_inside_its_directory(
    hostile: list[HostileServer], names: tuple[str, ...], recursive: bool
) -> None:
    s = session(hostile, _answer_lists(listing(*names)))
    with s, pytest.raises(RemoteProtocolError, match="holds"):
        s.list("sub", recursive=recursive)


def test_a_recursive_listing_may_go_deep(hostile: list[HostileServer]) -> None:
    s = session(hostile, _answer_lists(listing("sub/a/b", dirs=("sub/a",))))
    with s:
        assert {e.path for e in s.list("sub", recursive=True)} == {"sub/a", "sub/a/b"}


def test_a_glob_takes_only_names_of_its_directory(hostile: list[HostileServer]) -> None:
    s = session(hostile, _answer_lists(listing("a/x.txt", "b/x.txt")))
    with s, pytest.raises(RemoteProtocolError, match="holds"):
        s.glob("*.txt")


def test_an_endless_listing_is_cut_at_the_clients_limit(
    hostile: list[HostileServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcpft.client, "MAX_LIST_ENTRIES", 50)
    batch = frame(ListEntries(tuple(Entry(f"f{i}", False, 1, 0) for i in range(30))))
    with pytest.raises(RemoteProtocolError, match="limits"):
        session(hostile, listing=batch + batch + batch)  # and never a LIST_END


def test_a_listing_of_long_names_is_cut_at_the_clients_limit(
    hostile: list[HostileServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcpft.client, "MAX_LIST_NAME_CHARS", 10_000)
    batch = frame(ListEntries(tuple(Entry(f"{i:03d}" + "n" * 200, False, 1, 0) for i in range(30))))
    with pytest.raises(RemoteProtocolError, match="limits"):
        session(hostile, listing=batch + batch)


def test_the_cli_ls_refuses_a_bad_name_with_exit_code_10(
    hostile: list[HostileServer], tmp_path: Path
) -> None:
    server = HostileServer(listing=listing("../../x.txt"))
    hostile.append(server)
    env = dict(os.environ, TCPFT_PASSWORD="y", TCPFT_USER="x", TCPFT_CONFIG_DIR=str(tmp_path),
               TCPFT_STATE_DIR=str(tmp_path))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "tcpft", "ls", f"127.0.0.1:{server.port}", "--plaintext"],
        env=env, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 10, done.stderr
    assert "bad name" in done.stderr
    assert "Traceback" not in done.stderr
    assert "../../x.txt" not in done.stdout


# --- downloads -------------------------------------------------------------------


def test_two_downloads_to_one_local_name_never_share_a_partial_file(
    hostile: list[HostileServer], tmp_path: Path
) -> None:
    """a/x.txt and b/x.txt both land on dest/x.txt: the second must not write into the
    partial file of the first, which would then be published with its bytes."""
    good = b"the first file, verified\n"

    def respond(msg: Message) -> bytes:
        if isinstance(msg, Get) and msg.path == "a/x.txt":
            return whole_file("a/x.txt", good)
        if isinstance(msg, Get):
            return frame(FileHeader(msg.path, 100, 0)) + frame(Data(b"EVIL"))  # then a cut
        return b""

    dest = tmp_path / "dest"
    s = session(hostile, respond)
    with s:
        outcomes = dict(s.download_many([("a/x.txt", f"{dest}/"), ("b/x.txt", f"{dest}/")]))
    assert not isinstance(outcomes["a/x.txt"], Exception)
    assert isinstance(outcomes["b/x.txt"], AlreadyExists)
    assert (dest / "x.txt").read_bytes() == good
    assert sorted(p.name for p in dest.iterdir()) == ["x.txt"]
    hostile[0].join()
    assert [m.path for m in hostile[0].received if isinstance(m, Get)] == ["a/x.txt"]


def test_a_request_that_fails_before_its_file_leaves_no_partial(
    hostile: list[HostileServer], tmp_path: Path
) -> None:
    s = session(hostile, timeout=1.0)  # answers nothing
    with s, pytest.raises(TimeoutExpired):
        s.download("x.txt", tmp_path / "x.txt")
    assert list(tmp_path.iterdir()) == []


# --- uploads ---------------------------------------------------------------------


def _uploads(ready: PutReady, verdict: Message | None = None) -> Respond:
    """Answer every PUT with ``ready``, every DONE with ``verdict``, CANCEL with ACK."""

    def respond(msg: Message) -> bytes:
        if isinstance(msg, Put):
            return frame(ready)
        if isinstance(msg, Done):
            return frame(verdict or Ack(True))
        if isinstance(msg, Cancel):
            return frame(Ack(True))
        return b""

    return respond


@pytest.fixture
def five_mib(tmp_path: Path) -> Path:
    path = tmp_path / "five.bin"
    path.write_bytes(os.urandom(5 * 1024 * 1024))
    return path


def test_an_upload_the_server_refuses_with_ack_0_is_not_a_success(
    hostile: list[HostileServer], tmp_path: Path
) -> None:
    (tmp_path / "f.txt").write_text("some text\n")
    s = session(hostile, _uploads(PutReady(), Ack(False)))
    with s, pytest.raises(IntegrityError, match=r"check of f\.txt failed"):
        s.upload(tmp_path / "f.txt")


@pytest.mark.parametrize(
    ("resume", "offset"),
    [(False, RESUME_BLOCK_SIZE), (True, 5), (True, RESUME_BLOCK_SIZE + 1)],
)
def test_a_put_ready_offset_that_was_not_asked_for_is_a_protocol_error(
    hostile: list[HostileServer], five_mib: Path, resume: bool, offset: int
) -> None:
    s = session(hostile, _uploads(PutReady(offset, bytes(32))))
    with s, pytest.raises(RemoteProtocolError, match="PUT_READY offset"):
        s.upload(five_mib, resume=resume)


def test_a_resume_offered_again_after_a_bad_prefix_ends_the_upload(
    hostile: list[HostileServer], five_mib: Path
) -> None:
    """The prefix digest does not match: the client cancels and starts over without
    resume, where an offset is a protocol error (it used to retry until Python's
    recursion limit)."""
    s = session(hostile, _uploads(PutReady(RESUME_BLOCK_SIZE, bytes(32))))
    with s, pytest.raises(RemoteProtocolError, match="PUT_READY offset"):
        s.upload(five_mib, resume=True)
    hostile[0].join()
    assert sum(isinstance(m, Put) for m in hostile[0].received) == 2


def test_the_cli_put_exits_7_when_the_server_check_fails(
    hostile: list[HostileServer], tmp_path: Path
) -> None:
    (tmp_path / "f.txt").write_text("some text\n")
    server = HostileServer(_uploads(PutReady(), Ack(False)), version=3)  # no streaming
    hostile.append(server)
    env = dict(os.environ, TCPFT_PASSWORD="y", TCPFT_USER="x", TCPFT_CONFIG_DIR=str(tmp_path),
               TCPFT_STATE_DIR=str(tmp_path))  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "tcpft", "put", f"127.0.0.1:{server.port}", "f.txt", "--plaintext"],
        env=env, capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr
    assert "failed" in done.stderr and "Traceback" not in done.stderr
