"""tcpft.tls: certificates, fingerprints, contexts (over real loopback TLS) and known hosts."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import re
import socket
import ssl
import stat
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from cryptography import x509

from tcpft.errors import FingerprintMismatch, UsageError
from tcpft.tls import (
    KnownHosts,
    certificate_fingerprint,
    client_context,
    ensure_server_certificate,
    fingerprint,
    host_key,
    parse_fingerprint,
    server_context,
)

from .peer import Peer, peer

TIMEOUT = 5.0
FP_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


@pytest.fixture(scope="module")
def cert_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return ensure_server_certificate(tmp_path_factory.mktemp("tls") / "state")


def tls_server(ctx: ssl.SSLContext) -> AbstractContextManager[Peer]:
    """A TLS server for one handshake; its result is the TLS version agreed."""

    def handler(conn: socket.socket) -> str | None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            with contextlib.suppress(OSError):
                tls.recv(1)  # wait for the client to go away
            return tls.version()

    return peer(handler)


def handshake(port: int, ctx: ssl.SSLContext, server_hostname: str | None = None) -> bytes:
    """Connect, complete the handshake, return the server's DER certificate."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        tls = ctx.wrap_socket(raw, server_hostname=server_hostname)
        with tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            return der


# --- certificate ---------------------------------------------------------------------


def test_certificate_created_once_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    cert, key = ensure_server_certificate(state)
    assert (cert, key) == (state / "server.crt", state / "server.key")
    first = certificate_fingerprint(cert)
    assert ensure_server_certificate(state) == (cert, key)
    assert certificate_fingerprint(cert) == first
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    assert sorted(p.name for p in state.iterdir()) == ["server.crt", "server.key"]  # no temps


@pytest.mark.parametrize("lost", ["server.key", "server.crt"])
def test_half_an_identity_is_refused_not_replaced(tmp_path: Path, lost: str) -> None:
    cert, key = ensure_server_certificate(tmp_path)
    kept = {p: p.read_bytes() for p in (cert, key)}
    (tmp_path / lost).unlink()
    with pytest.raises(UsageError, match=f"{tmp_path / lost} is missing") as info:
        ensure_server_certificate(tmp_path)
    assert "new server identity" in str(info.value)
    assert {p: p.read_bytes() for p in (cert, key) if p.exists()} == {
        p: v for p, v in kept.items() if p.name != lost
    }


def test_a_creation_cut_before_the_key_was_renamed_is_finished(tmp_path: Path) -> None:
    cert, key = ensure_server_certificate(tmp_path)
    first = certificate_fingerprint(cert)
    key.rename(tmp_path / "server.key.new")  # as left by a crash after the commit point
    assert ensure_server_certificate(tmp_path) == (cert, key)
    assert certificate_fingerprint(cert) == first
    server_context(cert, key)  # the key is the certificate's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.crt", "server.key"]


def test_an_encrypted_key_is_a_clear_error(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    cert, key = ensure_server_certificate(tmp_path)
    plain = serialization.load_pem_private_key(key.read_bytes(), None)
    key.write_bytes(
        plain.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass phrase"),
        )
    )
    with pytest.raises(UsageError, match=f"the private key {key} is encrypted"):
        server_context(cert, key)


def test_certificate_contents(cert_pair: tuple[Path, Path]) -> None:
    cert = x509.load_pem_x509_certificate(cert_pair[0].read_bytes())
    cn = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["tcpft server"]
    assert cert.issuer == cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 3651


# --- fingerprints --------------------------------------------------------------------


def test_fingerprint_format() -> None:
    fp = fingerprint(b"x")
    assert FP_RE.match(fp)
    assert base64.b64decode(fp[7:] + "=") == hashlib.sha256(b"x").digest()


def test_fingerprint_matches_real_handshake(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    expected = certificate_fingerprint(cert)
    assert FP_RE.match(expected)
    with tls_server(server_context(cert, key)) as server:
        der = handshake(server.port, client_context())
        assert server.done.wait(TIMEOUT)
    assert server.error is None
    assert fingerprint(der) == expected


def test_parse_fingerprint_forms() -> None:
    digest = hashlib.sha256(b"cert").digest()
    canonical = fingerprint(b"cert")
    hexdigits = digest.hex()
    assert parse_fingerprint(canonical) == canonical
    assert parse_fingerprint(f"  {canonical}=\n") == canonical
    assert parse_fingerprint(hexdigits) == canonical
    assert parse_fingerprint(hexdigits.upper()) == canonical
    assert parse_fingerprint(":".join(f"{b:02X}" for b in digest)) == canonical


@pytest.mark.parametrize(
    "text",
    [
        "",
        "SHA256:",
        "garbage",
        "SHA256:" + "A" * 42,
        "SHA256:" + "A" * 44,
        "SHA256:" + "A" * 42 + "-",
        "SHA256:" + "A" * 43 + "==",
        "MD5:" + "A" * 43,
        "ab" * 31,
        "ab" * 33,
        "zz" * 32,
        "ab:" * 31 + "abc",
    ],
)
def test_parse_fingerprint_refuses_garbage(text: str) -> None:
    with pytest.raises(UsageError, match="fingerprint"):
        parse_fingerprint(text)


# --- contexts ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_server_refuses_tls_1_1(cert_pair: tuple[Path, Path]) -> None:
    """A client that really offers TLS 1.1 (and every cipher) is turned away by the server."""
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.set_ciphers("ALL:@SECLEVEL=0")
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with tls_server(server_context(*cert_pair)) as server, pytest.raises(ssl.SSLError):
        handshake(server.port, old)
    assert server.result is None
    assert isinstance(server.error, ssl.SSLError)
    assert server.error.reason == "UNSUPPORTED_PROTOCOL"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_client_refuses_tls_1_1(cert_pair: tuple[Path, Path]) -> None:
    ctx = client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    with tls_server(server_context(*cert_pair)) as server, pytest.raises(ssl.SSLError):
        handshake(server.port, ctx)
    assert server.result is None


def test_tls12_ciphers_are_ecdhe_aead_only(cert_pair: tuple[Path, Path]) -> None:
    for ctx in (server_context(*cert_pair), client_context()):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for c in tls12:
            assert c["kea"] == "kx-ecdhe", c["name"]
            assert c["aead"], c["name"]
            assert "GCM" in c["name"] or "CHACHA20" in c["name"], c["name"]
        assert ctx.options & ssl.OP_NO_COMPRESSION
    assert server_context(*cert_pair).options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_cafile_verifies_localhost(cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    ctx = client_context(cafile=cert)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    with tls_server(server_context(cert, key)) as server:
        der = handshake(server.port, ctx, server_hostname="localhost")
    assert fingerprint(der) == certificate_fingerprint(cert)
    with (
        tls_server(server_context(cert, key)) as server,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        handshake(server.port, ctx, server_hostname="not-this-host.example")


def test_pinning_context_verifies_nothing() -> None:
    ctx = client_context()
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_bad_files_are_usage_errors(tmp_path: Path, cert_pair: tuple[Path, Path]) -> None:
    cert, key = cert_pair
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(UsageError):
        server_context(tmp_path / "missing.crt", key)
    with pytest.raises(UsageError):
        server_context(cert, junk)
    with pytest.raises(UsageError):
        server_context(cert, ensure_server_certificate(tmp_path / "other")[1])  # mismatch
    with pytest.raises(UsageError):
        client_context(cafile=tmp_path / "missing.pem")
    with pytest.raises(UsageError):
        client_context(cafile=junk)
    with pytest.raises(UsageError):
        certificate_fingerprint(junk)


# --- known hosts ---------------------------------------------------------------------

FP1 = fingerprint(b"one")
FP2 = fingerprint(b"two")


def test_host_key() -> None:
    assert host_key("Example.ORG", 7878) == "example.org:7878"
    assert host_key("::1", 7878) == "[::1]:7878"
    assert host_key("[0:0:0:0:0:0:0:1]", 1) == "[::1]:1"
    for host, port in [("", 1), ("a b", 1), ("a#b", 1), ("h", 0), ("h", 65536), ("1::2::3", 1)]:
        with pytest.raises(UsageError):
            host_key(host, port)


def test_known_hosts_add_lookup_check(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "known_hosts"
    kh = KnownHosts(path)
    assert kh.lookup("example.org", 7878) is None
    assert kh.check("example.org", 7878, FP1) is False
    kh.add("Example.org", 7878, FP1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == f"example.org:7878 {FP1}\n"
    assert kh.lookup("EXAMPLE.ORG", 7878) == FP1
    assert kh.lookup("example.org", 7879) is None
    assert kh.check("example.org", 7878, FP1) is True
    assert kh.check("example.org", 7879, FP2) is False


def test_known_hosts_replace_keeps_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# mine\nb:1 {FP1}\na:1 {FP1}\n\nc:1 {FP2}")  # no final newline
    kh = KnownHosts(path)
    kh.add("d", 1, FP1)
    assert path.read_text().endswith(f"c:1 {FP2}\nd:1 {FP1}\n")
    kh.add("a", 1, FP2)
    assert path.read_text() == f"# mine\nb:1 {FP1}\na:1 {FP2}\n\nc:1 {FP2}\nd:1 {FP1}\n"
    assert kh.lookup("a", 1) == FP2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["known_hosts"]


def test_known_hosts_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    kh = KnownHosts(path)
    kh.add("::1", 7878, FP1)
    assert path.read_text() == f"[::1]:7878 {FP1}\n"
    assert kh.lookup("[::1]", 7878) == FP1
    assert kh.lookup("0::1", 7878) == FP1
    assert kh.lookup("::2", 7878) is None


def test_known_hosts_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# comment\n\nexample.org:7878 {FP1}\n")
    with pytest.raises(FingerprintMismatch) as info:
        KnownHosts(path).check("example.org", 7878, FP2)
    msg = str(info.value)
    for part in ("example.org:7878", FP1, FP2, str(path), "line 3"):
        assert part in msg


@pytest.mark.parametrize(
    "bad",
    [
        "example.org 7878",
        f"example.org {FP1}",
        f"example.org:port {FP1}",
        f"example.org:0 {FP1}",
        "example.org:7878 SHA256:nope",
        f"example.org:7878 {FP1} extra",
        f"::1:7878 {FP1}",
        f"example.org:\u00b2 {FP1}",  # a digit, but not an ASCII one
        f"example.org:\u0663 {FP1}",
    ],
)
def test_known_hosts_malformed(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# comment\nok:1 {FP1}\n{bad}\n")
    with pytest.raises(UsageError, match=r"line 3") as info:
        KnownHosts(path).lookup("ok", 1)
    assert str(path) in str(info.value)


def test_known_hosts_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_bytes(b"# ok\n# \xff\n")
    with pytest.raises(UsageError, match="line 2"):
        KnownHosts(path).lookup("a", 1)


def test_known_hosts_bom_does_not_hide_the_first_entry(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_bytes(f"\ufeffexample.org:7878 {FP1}\nother:1 {FP2}\n".encode())
    kh = KnownHosts(path)
    assert kh.lookup("example.org", 7878) == FP1
    assert kh.check("example.org", 7878, FP1)
    kh.add("third", 2, FP2)
    assert kh.lookup("example.org", 7878) == FP1 and kh.lookup("third", 2) == FP2
