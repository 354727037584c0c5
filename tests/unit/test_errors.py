"""The exception tree: wire codes to classes and back, fatality, exit codes, the drawn tree."""

from __future__ import annotations

import inspect
import re

import pytest

from tcpft import errors
from tcpft.errors import (
    FATAL_CODES,
    ErrorCode,
    FrameTooLarge,
    ProtocolError,
    RemoteProtocolError,
    TcpftError,
    error_from_wire,
    is_fatal,
)

CLASSES: list[type[BaseException]] = [
    obj
    for obj in vars(errors).values()
    if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == errors.__name__
]

# Codes whose received form deliberately maps to a class with another code:
# FRAME_TOO_LARGE from the peer means *our* frame was too large; FrameTooLarge is
# kept for frames we receive, and the peer's complaint becomes a plain protocol error.
NOT_ROUND_TRIPPED = {ErrorCode.FRAME_TOO_LARGE}


def test_wire_values_are_fixed() -> None:
    assert {c.name: int(c) for c in ErrorCode} == {
        "PROTOCOL_ERROR": 1, "UNSUPPORTED_VERSION": 2, "FRAME_TOO_LARGE": 3,
        "AUTH_FAILED": 10, "PENALIZED": 11, "LOGIN_TIMEOUT": 12, "IDLE_TIMEOUT": 13,
        "TOO_MANY_CONNECTIONS": 14, "INVALID_NAME": 20, "PERMISSION_DENIED": 21,
        "ALREADY_EXISTS": 22, "TOO_LARGE": 23, "NO_SPACE": 24, "FILE_CHANGED": 25,
        "DIGEST_MISMATCH": 26, "IO_ERROR": 27, "SHUTTING_DOWN": 30, "INTERNAL_ERROR": 31,
    }  # fmt: skip


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_every_code_maps_to_a_tcpft_error(code: ErrorCode) -> None:
    exc = error_from_wire(int(code), "the text")
    assert isinstance(exc, TcpftError)
    assert type(exc) is not TcpftError
    assert exc.message == "the text"
    assert str(exc) == "the text"


@pytest.mark.parametrize(
    "code", [c for c in ErrorCode if c not in NOT_ROUND_TRIPPED], ids=lambda c: c.name
)
def test_code_round_trips(code: ErrorCode) -> None:
    assert error_from_wire(int(code), "x").code is code


def _own_code_classes(code: ErrorCode) -> list[type[TcpftError]]:
    return [
        cls for cls in CLASSES if issubclass(cls, TcpftError) and cls.__dict__.get("code") is code
    ]


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_unique_code_maps_to_its_class(code: ErrorCode) -> None:
    owners = _own_code_classes(code)
    if len(owners) != 1 or code in NOT_ROUND_TRIPPED:
        return
    (owner,) = owners
    assert issubclass(type(error_from_wire(int(code), "")), owner)


def test_frame_too_large_from_peer_is_a_protocol_error() -> None:
    exc = error_from_wire(int(ErrorCode.FRAME_TOO_LARGE), "too big")
    assert isinstance(exc, ProtocolError)
    assert exc.exit_code == 10


def test_each_class_with_a_code_is_reachable_or_local() -> None:
    # Every class that names a code of its own is what that code turns into, unless
    # the code has several owners (then one of them is the received form).
    for cls in CLASSES:
        code = cls.__dict__.get("code")
        if code is None or code in NOT_ROUND_TRIPPED:
            continue
        received = type(error_from_wire(int(code), ""))
        owners = _own_code_classes(code)
        assert any(issubclass(received, o) for o in owners), cls


@pytest.mark.parametrize("code", [0, 4, 15, 99, 999, 0xFFFF])
def test_unknown_code_is_a_remote_protocol_error(code: int) -> None:
    exc = error_from_wire(code, "what")
    assert type(exc) is RemoteProtocolError
    assert str(code) in str(exc)
    assert "what" in str(exc)


@pytest.mark.parametrize("code", [0, 4, 15, 99, 999, 0xFFFF, -1])
def test_unknown_codes_are_fatal(code: int) -> None:
    assert is_fatal(code) is True


def test_fatal_codes_are_fixed() -> None:
    fatal = {c for c in ErrorCode if is_fatal(int(c))}
    assert {int(c) for c in fatal} == {1, 2, 3, 11, 12, 13, 14, 30, 31}
    assert fatal == set(FATAL_CODES)
    for c in ErrorCode:
        assert is_fatal(c) is (c in FATAL_CODES)


def test_every_class_has_an_int_exit_code() -> None:
    for cls in CLASSES:
        assert issubclass(cls, TcpftError)
        assert isinstance(cls.exit_code, int)
        assert 1 <= cls.exit_code <= 125, cls


def test_every_class_derives_from_tcpft_error() -> None:
    assert len(CLASSES) >= 25
    for cls in CLASSES:
        assert issubclass(cls, TcpftError), cls


def test_every_class_has_a_code_and_a_docstring() -> None:
    for cls in CLASSES:
        assert issubclass(cls, TcpftError)
        assert isinstance(cls.code, ErrorCode)
        assert cls.__doc__


def test_default_message_is_the_docstring() -> None:
    exc = FrameTooLarge()
    assert exc.message == FrameTooLarge.__doc__
    assert str(TcpftError("x")) == "x"


def test_frame_too_large_is_remote() -> None:
    assert issubclass(FrameTooLarge, RemoteProtocolError)
    assert FrameTooLarge.code is ErrorCode.FRAME_TOO_LARGE


# --- the tree drawn in the module docstring ------------------------------------------

_LINE = re.compile(r"^(?P<prefix>[│├└─ ]*)(?P<name>[A-Za-z]+)\b(?:.*\bexit (?P<exit>\d+))?")


def _drawn_tree() -> list[tuple[int, str, int | None]]:
    doc = errors.__doc__ or ""
    body = doc.split("::", 1)[1]
    rows: list[tuple[int, str, int | None]] = []
    for line in body.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line.strip("\n")[4:])  # the block is indented by 4
        assert m, line
        depth = len(m["prefix"]) // 4
        rows.append((depth, m["name"], int(m["exit"]) if m["exit"] else None))
    return rows


def test_drawn_tree_matches_the_classes() -> None:
    rows = _drawn_tree()
    assert rows[0] == (0, "TcpftError", None)
    parents: list[str] = []
    for depth, name, exit_code in rows:
        cls = getattr(errors, name)
        parents = [*parents[:depth], name]
        if depth:
            assert cls.__bases__ == (getattr(errors, parents[depth - 1]),), name
        if exit_code is not None:
            assert cls.exit_code == exit_code, name


def test_drawn_tree_names_every_class() -> None:
    drawn = {name for _, name, _ in _drawn_tree()}
    assert {cls.__name__ for cls in CLASSES} == drawn


def test_a_long_error_text_from_the_wire_is_cut() -> None:
    """Senders cut at MAX_ERROR_TEXT_BYTES; a peer that does not gets cut here."""
    exc = error_from_wire(int(ErrorCode.IO_ERROR), "x" * 60_000)
    assert len(str(exc)) < 1100 and str(exc).endswith("...")
    assert str(error_from_wire(int(ErrorCode.IO_ERROR), "short")) == "short"
