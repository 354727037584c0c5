"""TLS scan of a running server with the stdlib ssl module, and cut TLS streams."""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import warnings
from collections.abc import Callable
from functools import partial

import pytest

from tcpft.client import Session
from tcpft.errors import ConnectError, ConnectionBroken
from tcpft.tls import ensure_server_certificate

from ..conftest import Env, ServerThread
from .rawclient import RawConn, client_context

StartServer = Callable[..., ServerThread]

MIB = 1024 * 1024

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    OLD_VERSIONS = {"TLSv1": ssl.TLSVersion.TLSv1, "TLSv1_1": ssl.TLSVersion.TLSv1_1}


def _client(
    version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext | None:
    """A client context pinned to ``version`` and ``ciphers``; None if OpenSSL refuses."""
    ctx = client_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            if version is not None:
                ctx.minimum_version = version
                ctx.maximum_version = version
            if ciphers is not None:
                ctx.set_ciphers(ciphers)
        except (ssl.SSLError, ValueError):
            return None
    return ctx


def _handshake_in_memory(client: ssl.SSLContext, server: ssl.SSLContext) -> bool:
    """Whether ``client`` can complete a handshake with ``server`` at all, here."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(20):
        for i, obj in enumerate((c, s)):
            if done[i]:
                continue
            try:
                obj.do_handshake()
                done[i] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return False
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done):
            return True
    return False


def _permissive_server(env: Env) -> ssl.SSLContext:
    """A server context with the test's certificate that allows anything OpenSSL can do."""
    cert, key = ensure_server_certificate(env.state)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    ctx.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    ctx.load_cert_chain(cert, key)
    return ctx


def _handshake_with(srv: ServerThread, ctx: ssl.SSLContext) -> RawConn:
    conn = RawConn(srv.port, handshake=False, context=ctx)
    try:
        conn.handshake(5.0)
    except BaseException:
        conn.close()
        raise
    return conn


def _refused(srv: ServerThread, ctx: ssl.SSLContext) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake_with(srv, ctx).close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", OLD_VERSIONS)
def test_tls_versions_below_1_2_are_refused(start_server: StartServer, env: Env, name: str) -> None:
    srv = start_server()
    ctx = _client(OLD_VERSIONS[name], "ALL:@SECLEVEL=0")
    if ctx is None or not _handshake_in_memory(ctx, _permissive_server(env)):
        pytest.skip(f"the local OpenSSL cannot speak {name} at all")
    _refused(srv, ctx)


WEAK_TLS12 = [
    "AES128-SHA",
    "AES256-SHA256",
    "AES128-GCM-SHA256",  # static RSA key exchange: no forward secrecy
    "DES-CBC3-SHA",
    "RC4",
    "aNULL",
    "eNULL",
    "EXPORT",
    "kRSA",
    "PSK",
    "DHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-SHA",
    "ECDHE-ECDSA-AES128-SHA",  # CBC with SHA-1 MAC
    "ECDHE-ECDSA-AES256-SHA",
    "ECDHE-ECDSA-AES128-SHA256",  # CBC
    "ECDHE-ECDSA-AES256-SHA384",  # CBC
    "ECDHE-ECDSA-CAMELLIA128-SHA256",
    "ECDHE-ECDSA-AES128-CCM8",
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cipher", WEAK_TLS12)
def test_weak_tls12_ciphers_are_refused(start_server: StartServer, cipher: str) -> None:
    srv = start_server()
    ctx = _client(ssl.TLSVersion.TLSv1_2, cipher + ":@SECLEVEL=0")
    if ctx is None:
        pytest.skip(f"the local OpenSSL cannot set {cipher!r}")
    _refused(srv, ctx)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"]
)
def test_strong_tls12_ciphers_are_accepted(start_server: StartServer, cipher: str) -> None:
    srv = start_server()
    ctx = _client(ssl.TLSVersion.TLSv1_2, cipher)
    assert ctx is not None
    with _handshake_with(srv, ctx) as conn:
        assert conn.ssl_object.version() == "TLSv1.2"
        got = conn.ssl_object.cipher()
        assert got is not None and got[0] == cipher
        conn.hello()


@pytest.mark.timeout(30)
def test_chacha20_and_tls13_are_accepted(start_server: StartServer) -> None:
    srv = start_server()
    ctx = _client(ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305")
    if ctx is not None:
        with _handshake_with(srv, ctx) as conn:
            conn.hello()
    ctx13 = _client(ssl.TLSVersion.TLSv1_3)
    assert ctx13 is not None
    with _handshake_with(srv, ctx13) as conn:
        assert conn.ssl_object.version() == "TLSv1.3"
        conn.hello()


@pytest.mark.timeout(30)
def test_default_handshake_has_no_compression(start_server: StartServer) -> None:
    srv = start_server()
    with RawConn(srv.port) as conn:
        assert conn.ssl_object.compression() is None
        assert conn.ssl_object.version() in ("TLSv1.2", "TLSv1.3")


# --- a TLS stream cut in the middle of a download ---------------------------------------


def _cut(srv: ServerThread, how: str) -> None:
    """Cut every session's connection from the server side."""
    sessions = srv.call(lambda: list(srv.server._sessions.values()))
    if how == "stop":
        srv.stop(grace=0)
        return
    for session in sessions:
        transport = session.writer.transport
        if how == "abort":  # RST
            srv.call(transport.abort)
        elif how == "close_notify":  # a proper TLS close, but in the middle of the file
            srv.call(transport.close)
        else:  # a bare TCP FIN: no close_notify, the stream just ends
            raw: socket.socket = transport.get_extra_info("socket")
            srv.call(partial(raw.shutdown, socket.SHUT_RDWR))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["abort", "fin", "close_notify", "stop"])
def test_cut_tls_stream_is_never_a_clean_end(
    start_server: StartServer, login: Callable[..., Session], env: Env, how: str
) -> None:
    (env.root / "big.bin").write_bytes(os.urandom(8 * MIB))
    srv = start_server(limit_rate=4 * MIB)
    target = env.client / "big.bin"
    done: list[int] = []

    def progress(n: int, total: int) -> None:
        if n >= 2 * MIB and not done:
            done.append(n)
            _cut(srv, how)

    s = login(srv)
    try:
        expected = ConnectionBroken if how != "stop" else ConnectError
        with pytest.raises(expected):
            s.download("big.bin", target, progress=progress)
    finally:
        with contextlib.suppress(Exception):
            s.close()
    assert done, "the cut never happened"
    assert not target.exists()
    if how != "stop":  # the partial stays for a resume (see test_shutdown for "stop")
        partial = target.with_name("big.bin.tcpft-part")
        assert partial.exists() and 0 < partial.stat().st_size < 8 * MIB
