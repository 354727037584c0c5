"""The founding sequence, step by step, against a real TLS server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tcpft.client import Session
from tcpft.errors import AuthFailed, InvalidName

from ..conftest import BOB, Env, ServerThread


def test_login_then_listing_is_sent(server: ServerThread, login: Callable[..., Session]) -> None:
    with login(server) as s:
        names = {(e.path, e.is_dir) for e in s.listing}
        assert names == {("hello.txt", False), ("data.bin", False), ("sub", True)}
        assert s.user == "alice" and s.can_write


def test_wrong_password_is_refused(server: ServerThread, login: Callable[..., Session]) -> None:
    with pytest.raises(AuthFailed, match="login failed"):
        login(server, ("alice", "not-the-password"))


def test_unknown_user_is_refused_the_same_way(
    server: ServerThread, login: Callable[..., Session]
) -> None:
    with pytest.raises(AuthFailed, match="login failed"):
        login(server, ("mallory", "whatever"))


def test_bad_name_then_list_again_then_good_name(
    server: ServerThread, login: Callable[..., Session], env: Env
) -> None:
    with login(server, BOB) as s:
        with pytest.raises(InvalidName) as info:
            s.download("no-such-file", env.client)
        assert {e.path for e in info.value.listing} == {"hello.txt", "data.bin", "sub"}  # type: ignore[attr-defined]
        result = s.download("data.bin", env.client)
    assert (env.client / "data.bin").read_bytes() == (env.root / "data.bin").read_bytes()
    assert result.size == (env.root / "data.bin").stat().st_size
