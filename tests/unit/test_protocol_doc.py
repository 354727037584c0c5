"""docs/PROTOCOL.md and the protocol core must say the same thing.

The document marks what the code can check with HTML comments:

- ``<!-- frame: Message(...) -->`` then a fenced block: one whole frame in hex (``#``
  starts a comment). It must decode to that message and encode back to those bytes.
- ``<!-- table: NAME -->`` then a Markdown table: messages, transitions, error-next,
  speakers, error-codes, limits. Each must equal the corresponding table of the code.
- ``<!-- diagram: states -->`` then the Mermaid state diagram.
- ``<!-- prefix-digest: 00*N 01*M -->`` then a fenced block: a worked prefix digest.
- ``<!-- trace: NAME -->`` then a fenced block: a whole session, replayed through a
  client and a server :class:`~tcpft.protocol.Connection`. A comment saying "ahead"
  marks a pipelined GET, "starts" a queued GET that becomes the current one,
  "verdict" the answer on a streamed upload, and "owed=N" the verdicts owed after
  the frame.
"""

from __future__ import annotations

import ast
import hashlib
import re
from pathlib import Path
from typing import Any

import blake3
import pytest

from tcpft import limits, messages
from tcpft.config import DEFAULT_PORT
from tcpft.errors import FATAL_CODES, ErrorCode, is_fatal
from tcpft.frames import encode_frame
from tcpft.integrity import SHA256, Algorithm, algorithm_for, new_hasher, prefix_digest
from tcpft.protocol import (
    CLEAN_EOF_STATES,
    CLOSED,
    ERROR_NEXT,
    NEED_DATA,
    PIPELINE_STATES,
    TRANSITIONS,
    VERDICT_STATES,
    Connection,
    Role,
    State,
    payload_limit,
)
from tcpft.tls import fingerprint

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"
DOC = DOC_PATH.read_text(encoding="utf-8")

SENDER = {"client": Role.CLIENT, "server": Role.SERVER}

# ---------------------------------------------------------------------------- parsing


def _marked(kind: str) -> list[tuple[str, int]]:
    """(argument, end offset) of every ``<!-- kind: argument -->`` marker."""
    pattern = re.compile(rf"<!-- {re.escape(kind)}: (.+?) -->")
    return [(m.group(1), m.end()) for m in pattern.finditer(DOC)]


def _fence_after(pos: int) -> str:
    """The content of the first fenced code block after ``pos``."""
    m = re.compile(r"^```[a-z]*\n(.*?)^```", re.M | re.S).search(DOC, pos)
    assert m is not None, f"no code block after offset {pos}"
    return m.group(1)


def _hex(text: str) -> bytes:
    """The bytes of hex lines, ignoring everything from ``#`` to the end of a line."""
    return bytes.fromhex(" ".join(line.split("#", 1)[0] for line in text.splitlines()))


def _table(name: str) -> list[list[str]]:
    """The body rows (cells stripped) of the Markdown table after a table marker."""
    found = [pos for arg, pos in _marked("table") if arg == name]
    assert len(found) == 1, f"need exactly one '<!-- table: {name} -->' marker"
    lines = DOC[found[0] :].lstrip("\n").splitlines()
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    assert len(rows) >= 3, f"table {name} is empty"
    assert set(rows[1][0]) <= set("-: "), f"table {name} has no header separator"
    return rows[2:]


_NAMES: dict[str, Any] = {cls.__name__: cls for cls in messages.MESSAGE_TYPES.values()}
_NAMES["Entry"] = messages.Entry


def _build(node: ast.expr) -> Any:
    """Evaluate the tiny expression language of the frame markers (no eval)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes | int | bool):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_build(e) for e in node.elts)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        assert node.value.id == "ErrorCode", ast.dump(node)
        return ErrorCode[node.attr]
    if isinstance(node, ast.Call):
        args = [_build(a) for a in node.args]
        kwargs = {k.arg: _build(k.value) for k in node.keywords if k.arg}
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and (func.value.id, func.attr) == ("bytes", "fromhex")
        ):
            return bytes.fromhex(*args)
        assert isinstance(func, ast.Name) and func.id in _NAMES, ast.dump(node)
        return _NAMES[func.id](*args, **kwargs)
    raise AssertionError(f"unsupported expression in a frame marker: {ast.dump(node)}")


def _message(expr: str) -> messages.Message:
    msg = _build(ast.parse(expr, mode="eval").body)
    assert isinstance(msg, messages.Message)
    return msg


def _split_frame(frame: bytes) -> tuple[int, bytes]:
    assert len(frame) >= limits.FRAME_HEADER_SIZE
    length = int.from_bytes(frame[1:5], "big")
    assert len(frame) == limits.FRAME_HEADER_SIZE + length, "length field disagrees"
    return frame[0], frame[5:]


FRAMES = _marked("frame")

# ------------------------------------------------------------------------------ tests


def test_doc_has_examples() -> None:
    assert len(FRAMES) >= len(messages.MESSAGE_TYPES)


@pytest.mark.parametrize(("expr", "pos"), FRAMES, ids=[e for e, _ in FRAMES])
def test_frame_example_is_byte_exact(expr: str, pos: int) -> None:
    expected = _message(expr)
    frame = _hex(_fence_after(pos))
    frame_type, payload = _split_frame(frame)
    assert messages.decode_message(frame_type, payload) == expected
    assert encode_frame(expected.TYPE, expected.encode_payload()) == frame


def test_every_message_type_has_a_section_and_an_example() -> None:
    documented = {}
    for m in re.finditer(r"^### 0x([0-9a-f]{2}) ([A-Z_]+) \(`(\w+)`\)$", DOC, re.M):
        documented[int(m.group(1), 16)] = m.group(3)
    assert documented == {t: cls.__name__ for t, cls in messages.MESSAGE_TYPES.items()}
    with_example = {_message(expr).TYPE for expr, _ in FRAMES}
    assert with_example == set(messages.MESSAGE_TYPES)


def _wire_names() -> dict[int, str]:
    return {int(row[0].strip("`"), 16): row[1] for row in _table("messages")}


def test_message_overview_table() -> None:
    rows = _table("messages")
    got = {int(r[0].strip("`"), 16): r[3].strip("`") for r in rows}
    assert got == {t: cls.__name__ for t, cls in messages.MESSAGE_TYPES.items()}
    for r in rows:
        assert f"### {r[0].strip('`')} {r[1]} (" in DOC, f"no section for {r[1]}"


def _msg_cell(cell: str) -> int:
    """``0x05 LIST`` -> 5, checking the name against the overview table."""
    hex_type, name = cell.split()
    t = int(hex_type, 16)
    assert _wire_names()[t] == name, cell
    return t


def test_transition_table_is_the_code() -> None:
    doc = {
        (State(r[0]), SENDER[r[1]], _msg_cell(r[2])): (int(r[3]), State(r[4]))
        for r in _table("transitions")
    }
    code = {
        (state, role, cls.TYPE): (payload_limit(state, role, cls.TYPE), nxt)
        for (state, role, cls), nxt in TRANSITIONS.items()
    }
    assert doc == code
    assert len(_table("transitions")) == len(TRANSITIONS)


def test_error_next_table_is_the_code() -> None:
    doc = {State(r[0]): State(r[1]) for r in _table("error-next")}
    assert doc == ERROR_NEXT


def test_error_payload_limits_are_documented() -> None:
    for state in State:
        for role in Role:
            limit = payload_limit(state, role, messages.Error.TYPE)
            if state is State.CLOSED:
                assert limit is None
            elif state in (State.HELLO, State.WELCOME, State.AUTH, State.AUTH_WAIT):
                assert limit == limits.MAX_PRELOGIN_PAYLOAD
            else:
                assert limit == limits.MAX_CONTROL_PAYLOAD
    assert (
        f"payload limit is {limits.MAX_PRELOGIN_PAYLOAD} bytes in HELLO, WELCOME, AUTH and"
        in DOC.replace("\n", " ")
    )


def test_state_diagram_has_every_edge() -> None:
    found = [pos for arg, pos in _marked("diagram") if arg == "states"]
    assert len(found) == 1
    diagram = _fence_after(found[0])
    names = _wire_names()
    for (state, role, cls), nxt in TRANSITIONS.items():
        who = "C" if role is Role.CLIENT else "S"
        assert f"{state.value} --> {nxt.value} : {who} {names[cls.TYPE]}\n" in diagram
    for state, nxt in ERROR_NEXT.items():
        assert f"{state.value} --> {nxt.value} : S ERROR (non-fatal)\n" in diagram
    for state in CLEAN_EOF_STATES:
        assert f"{state.value} --> [*]" in diagram


def test_pipeline_states_table_is_the_code() -> None:
    assert {State(r[0]) for r in _table("pipeline-states")} == PIPELINE_STATES


def test_speaker_table() -> None:
    rows = {State(r[0]): r[1:] for r in _table("speakers")}
    assert set(rows) == set(State)
    names = _wire_names()
    for state, (who, frames, on_eof) in rows.items():
        code = [(r, cls) for (s, r, cls) in TRANSITIONS if s is state]
        senders = {"client" if r is Role.CLIENT else "server" for r, _ in code}
        assert senders == ({who} if code else set()), state
        listed = set() if frames == "(none)" else set(frames.split(", "))
        assert listed == {names[cls.TYPE] for _, cls in code}, state
        assert on_eof == ("clean" if state in CLEAN_EOF_STATES else "cut"), state


def test_error_code_table_is_the_code() -> None:
    rows = _table("error-codes")
    doc = {int(r[0]): (r[1], r[2]) for r in rows}
    assert len(rows) == len(ErrorCode)
    assert doc == {
        int(code): (code.name, "yes" if code in FATAL_CODES else "no") for code in ErrorCode
    }
    for code in ErrorCode:
        assert is_fatal(code) == (code in FATAL_CODES)


def test_limits_table_is_the_code() -> None:
    doc = {r[0]: int(r[1]) for r in _table("limits")}
    code = {
        name: value
        for name, value in vars(limits).items()
        if name.isupper() and isinstance(value, int)
    }
    assert doc == code


def _reference_digest(algorithm: str, data: bytes) -> bytes:
    """The digest straight from the hash libraries, not through tcpft."""
    if algorithm == SHA256:
        return hashlib.sha256(data).digest()
    assert algorithm == "blake3", algorithm
    return blake3.blake3(data).digest()


def test_digest_examples() -> None:
    examples = _marked("digest")
    assert {spec.split()[0] for spec, _ in examples} == {"sha256", "blake3"}
    for spec, pos in examples:
        algorithm, literal = spec.split(maxsplit=1)
        data = ast.literal_eval(literal).encode()
        assert _hex(_fence_after(pos)) == _reference_digest(algorithm, data), spec


def test_prefix_digest_examples() -> None:
    examples = _marked("prefix-digest")
    assert {spec.split()[0] for spec, _ in examples} == {"sha256", "blake3"}
    block = limits.RESUME_BLOCK_SIZE
    for spec, pos in examples:
        name, *tokens = spec.split()
        algorithm: Algorithm = "blake3" if name == "blake3" else SHA256
        data = b"".join(
            bytes([int(byte, 16)]) * int(count)
            for byte, count in (token.split("*") for token in tokens)
        )
        assert len(data) % block == 0
        blocks = [_reference_digest(name, data[i : i + block]) for i in range(0, len(data), block)]
        expected = _reference_digest(name, b"".join(blocks))
        assert expected == prefix_digest(blocks, algorithm)
        assert _hex(_fence_after(pos)) == expected, spec


TRACES = _marked("trace")


@pytest.mark.parametrize(("name", "pos"), TRACES, ids=[n for n, _ in TRACES])
def test_session_trace_replays(name: str, pos: int) -> None:
    """Each frame is what the sender's Connection produces and the receiver accepts."""
    conns = {"C": Connection(Role.CLIENT), "S": Connection(Role.SERVER)}
    steps: list[tuple[str, bytearray | None, str]] = []
    note = ""
    for line in _fence_after(pos).splitlines():
        if line.startswith("#"):
            note = line
        elif line[:3] in ("C>S", "S>C"):
            rest = line[3:].strip()
            frame = None if rest == "EOF" else bytearray.fromhex(rest)
            steps.append((line[0], frame, note))
        elif line.strip():
            frame = steps[-1][1]
            assert frame is not None and line.startswith(" "), line
            frame += bytes.fromhex(line)
    assert steps
    names = _wire_names()
    for who, frame, note in steps:
        sender, receiver = conns[who], conns["S" if who == "C" else "C"]
        if frame is None:
            receiver.receive_data(b"")
            assert receiver.next_event() is CLOSED
            continue
        frame_type, payload = _split_frame(bytes(frame))
        msg = messages.decode_message(frame_type, payload)
        before, owed = sender.state, sender.verdicts_owed
        assert owed == receiver.verdicts_owed
        assert sender.send(msg) == frame
        receiver.receive_data(bytes(frame))
        if "ahead" in note:  # a pipelined GET (5.5): queued on both sides
            assert isinstance(msg, messages.Get) and sender.state is before
            assert receiver.next_event() is NEED_DATA
        else:
            assert receiver.next_event() == msg
        if "starts" in note:  # a queued GET became the current one: the server is told
            assert isinstance(conns["S"].next_event(), messages.Get), note
        assert receiver.next_event() is NEED_DATA
        assert sender.state is receiver.state
        assert sender.verdicts_owed == receiver.verdicts_owed
        if "verdict" in note:  # a streamed upload's verdict (5.6): the state stays
            assert who == "S" and isinstance(msg, messages.Ack | messages.Error), note
            assert sender.state is before and before in VERDICT_STATES, note
            assert sender.verdicts_owed == owed - 1, note
        else:
            assert sender.verdicts_owed >= owed, note
        if isinstance(msg, messages.Put):
            assert ("stream" in note) == msg.stream, note
        count = re.search(r"owed=(\d+)", note)
        if count:
            assert sender.verdicts_owed == int(count.group(1)), note
        # The comment above the frame names it (and its code or verdict) and the new state.
        words = re.findall(r"[\w=]+", note)
        assert words[0] == names[msg.TYPE], (note, msg)
        if isinstance(msg, messages.Error):
            assert words[1] == ErrorCode(msg.code).name, (note, msg)
        if isinstance(msg, messages.Ack):
            assert f"ok={int(msg.ok)}" in note, (note, msg)
        if isinstance(msg, messages.Done):  # its digest is of the content the note names
            named = re.search(r'DONE (\w+)\(("(?:[^"\\]|\\.)*")\)', note)
            assert named, note
            algorithm = algorithm_for(conns["C"].version)
            assert named.group(1) == algorithm, (note, conns["C"].version)
            hasher = new_hasher(algorithm)
            hasher.update(ast.literal_eval(named.group(2)).encode())
            assert msg.digest == hasher.digest(), note
        assert note.endswith(f"[-> {sender.state.value}]"), (note, sender.state)


def test_constants_in_prose() -> None:
    assert f"default server port\n  is **{DEFAULT_PORT}**" in DOC
    assert " ".join(f"{b:02x}" for b in messages.MAGIC) in DOC
    assert f"The highest version today is **{messages.PROTOCOL_VERSION}**" in DOC
    assert f"At most **{limits.MAX_GETS_AHEAD}** GETs ahead" in DOC
    assert f"At most **{limits.MAX_PUTS_AHEAD}** verdicts owed" in DOC
    # Where a verdict may come, as 5 and 5.6 say it.
    names = [state.value for state in State if state in VERDICT_STATES]
    where = f"in {', '.join(names[:-1])} or {names[-1]} (`tcpft.protocol.VERDICT_STATES`)"
    assert re.sub(r"\s+", " ", DOC).count(where) == 2
    # The fingerprint format example is the SHA-256 of empty input.
    assert fingerprint(b"") in DOC
