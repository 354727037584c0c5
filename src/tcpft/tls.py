"""Certificates, fingerprints, SSL contexts, known-hosts pinning, the client's TLS stream.

The server makes itself a self-signed certificate on first start
(:func:`ensure_server_certificate`). A client trusts it either through a CA file
(``client_context(cafile)``: normal X.509 verification and host name check) or by
pinning its fingerprint on first use, as SSH does (``client_context()`` plus
:class:`KnownHosts`).

A fingerprint is ``SHA256:`` followed by the base64 (standard alphabet, no padding) of
the SHA-256 of the DER certificate, the style of OpenSSH: ``SHA256:`` + 43 characters.

Known-hosts file
----------------
UTF-8 text, one entry per line::

    # comments and blank lines are ignored
    example.org:7878 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU
    [::1]:7878 SHA256:uXgNDnT8H5X0pXpIPg/Mc6rSB1nMp5V8u1jqxbaNwL4

``HOST:PORT``, white space, the fingerprint. HOST is lower-cased and an IPv6 address
is written compressed and in brackets. Any other line is an error (naming the file
and the line number). A client that meets a known host with a different fingerprint
refuses to go on; if the change is expected, delete that line and connect again.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from .errors import (
    ConnectError,
    FingerprintMismatch,
    LocalFileError,
    TimeoutExpired,
    TLSVerifyError,
    UsageError,
)

if TYPE_CHECKING:  # cryptography is imported where certificates are made: a client never is
    from cryptography import x509

__all__ = [
    "CIPHERS",
    "KnownHosts",
    "TLSStream",
    "TrustNew",
    "certificate_fingerprint",
    "client_context",
    "ensure_server_certificate",
    "fingerprint",
    "host_key",
    "open_client_tls",
    "parse_fingerprint",
    "server_context",
]

#: OpenSSL cipher string for TLS 1.2: forward secrecy and AEAD only (TLS 1.3 suites all are).
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
CERT_NAME = "server.crt"
KEY_NAME = "server.key"
CERT_VALID_DAYS = 3650

_T = TypeVar("_T")

_B64_FP = re.compile(r"SHA256:([A-Za-z0-9+/]{43})=?", re.IGNORECASE)
_HEX_FP = re.compile(r"[0-9a-fA-F]{64}|(?:[0-9a-fA-F]{2}:){31}[0-9a-fA-F]{2}")
_DNS_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(?:\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` through a temporary file born with ``mode``, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # the umask may have taken bits we want (0o644)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _hostname_san() -> list[x509.GeneralName]:
    from cryptography import x509

    name = socket.gethostname().lower().rstrip(".")
    if name == "localhost" or len(name) > 253 or not _DNS_NAME.fullmatch(name):
        return []
    return [x509.DNSName(name)]


def ensure_server_certificate(state_dir: Path) -> tuple[Path, Path]:
    """Return ``(cert_path, key_path)`` in ``state_dir``, creating them if both are missing.

    A new EC P-256 key (mode 0600) and a self-signed certificate (mode 0644, CN
    "tcpft server", SANs localhost, this host's name, 127.0.0.1 and ::1, ten years).
    The key is written as ``server.key.new``, then the certificate (the commit point),
    then the key is renamed into place: a start after a crash in between finishes the
    rename. One of the two without the other (a file deleted or lost) is refused: the
    server's identity never changes without its owner asking for it.

    Raises:
        UsageError: only one of the two files exists, or they cannot be looked at (a
            name too long for the file system, no permission).
        LocalFileError: the directory or the files cannot be made or written.
    """
    cert_path, key_path = state_dir / CERT_NAME, state_dir / KEY_NAME
    new_key = state_dir / (KEY_NAME + ".new")
    try:
        have_cert, have_key = cert_path.is_file(), key_path.is_file()
        if have_cert and not have_key and new_key.is_file():
            os.replace(new_key, key_path)  # made with this certificate; the rename was cut
            have_key = True
    except OSError as exc:  # a name too long, no permission
        why = exc.strerror or exc
        raise UsageError(f"cannot use the state directory {state_dir}: {why}") from None
    if have_cert and have_key:
        return cert_path, key_path
    if have_cert or have_key:
        there, gone = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise UsageError(
            f"{gone} is missing, though {there} is there: restore it, or delete "
            f"{there.name} as well to make a new server identity (clients that pinned the "
            "old fingerprint will then refuse the server until their pin is removed)"
        )
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tcpft server")])
    now = datetime.datetime.now(datetime.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        *_hostname_san(),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _atomic_write(new_key, key_pem, 0o600)
        _atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        os.replace(new_key, key_path)
    except OSError as exc:
        raise LocalFileError(f"cannot write the server certificate in {state_dir}: {exc}") from exc
    return cert_path, key_path


def fingerprint(der: bytes) -> str:
    """Return ``SHA256:<base64, no padding>`` of a DER certificate. Raises nothing."""
    digest = hashlib.sha256(der).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def certificate_fingerprint(cert_path: Path) -> str:
    """Return the fingerprint of the PEM certificate at ``cert_path``.

    Raises:
        UsageError: the file cannot be read or holds no PEM certificate.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the certificate {cert_path}: {exc}") from exc
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def parse_fingerprint(text: str) -> str:
    """Normalize a fingerprint typed by a user to the canonical ``SHA256:...`` form.

    Accepts ``SHA256:`` + base64 (with or without its ``=``) and 64 hex digits, with or
    without colons between the bytes.

    Raises:
        UsageError: ``text`` is none of these.
    """
    text = text.strip()
    if m := _B64_FP.fullmatch(text):
        digest = base64.b64decode(m.group(1) + "=")
    elif _HEX_FP.fullmatch(text):
        digest = binascii.unhexlify(text.replace(":", ""))
    else:
        raise UsageError(
            f"not a certificate fingerprint: {text!r} (expected SHA256: followed by 43 "
            "base64 characters, or 64 hex digits, optionally separated by colons)"
        )
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def _restrict(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """Return the server's SSL context: TLS 1.2+ with ECDHE and AEAD ciphers only.

    Raises:
        UsageError: the certificate or key is missing, unreadable, malformed or mismatched.
    """
    ctx = _restrict(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE

    def encrypted() -> bytes:  # asked for a pass phrase: never prompt for one
        raise UsageError(
            f"the private key {key} is encrypted; tcpft needs it unencrypted "
            "(openssl pkey -in ENCRYPTED -out PLAIN)"
        )

    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key, password=encrypted)
    except OSError as exc:  # ssl.SSLError is an OSError
        raise UsageError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from exc
    return ctx


def client_context(cafile: Path | None = None) -> ssl.SSLContext:
    """Return the client's SSL context, TLS 1.2+ with ECDHE and AEAD ciphers only.

    With ``cafile``, the server's chain and host name are verified against it. Without,
    nothing is verified during the handshake: the caller must then compare
    ``fingerprint(sock.getpeercert(binary_form=True))`` with the pinned value.

    Raises:
        UsageError: ``cafile`` is missing, unreadable or holds no certificate.
    """
    ctx = _restrict(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    try:
        ctx.load_verify_locations(cafile=cafile)
    except OSError as exc:
        raise UsageError(f"cannot load CA certificates from {cafile}: {exc}") from exc
    return ctx


class TLSStream:
    """The client's TLS connection: an ``ssl.SSLObject`` over memory BIOs on a socket.

    It offers the calls of the ``ssl.SSLSocket`` it stands in for (``recv_into``,
    ``sendall``, ``pending``, ``unwrap``, ``close``, ``settimeout``, ``fileno``, ...),
    with the socket's blocking and timeout. An ``SSLSocket`` makes two ``recv`` calls
    per 16 KiB record (its header, then its body); this reads the socket up to
    :data:`RECV_SIZE` at a time and decrypts the records from memory; it encrypts what it
    sends :data:`SEND_PIECE` at a time, in memory, and sends each piece with one call.
    A stream cut without TLS's close_notify raises ``ssl.SSLEOFError``: it is never
    taken for a clean end.
    """

    #: Bytes read from the socket at once.
    RECV_SIZE = 256 * 1024
    #: Bytes encrypted and sent at once: 4 records. Larger pieces cost more than they
    #: save: glibc gives each a fresh mapping, faulted in page by page (a 1 GiB upload
    #: in 512 KiB pieces took 200,000 page faults and 0.4 s more CPU).
    SEND_PIECE = 64 * 1024

    def __init__(
        self, sock: socket.socket, ctx: ssl.SSLContext, server_hostname: str | None
    ) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = ctx.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self._raw = memoryview(bytearray(self.RECV_SIZE))

    def do_handshake(self) -> None:
        self._until_done(self._tls.do_handshake)

    def peer_certificate(self) -> bytes:
        """The server's certificate, DER, once the handshake is done."""
        der = self._tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    def recv_into(self, buffer: memoryview | bytearray, nbytes: int = 0) -> int:
        """Read decrypted bytes into ``buffer`` (at most one record); 0 at a clean end."""
        size = nbytes or len(buffer)
        while True:  # inline, not through _until_done: this runs once per record
            try:
                n: int = self._tls.read(size, buffer)  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                self._fill()
                continue
            if self._outgoing.pending:  # the answer to a KeyUpdate
                self._flush()
            return n

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), self.SEND_PIECE):
            self._tls.write(view[start : start + self.SEND_PIECE])  # the BIO takes it all
            self._flush()

    def pending(self) -> int:
        """Bytes received and not yet handed out (decrypted or not)."""
        return self._tls.pending() + self._incoming.pending

    def unwrap(self) -> None:
        """Send close_notify and wait for the server's (bounded by the socket's timeout)."""
        self._until_done(self._tls.unwrap)

    def _until_done(self, op: Callable[[], _T]) -> _T:
        while True:
            try:
                result = op()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            self._flush()  # a handshake's last flight, close_notify
            return result

    def _fill(self) -> None:
        n = self.sock.recv_into(self._raw)
        if n:
            self._incoming.write(self._raw[:n])
        else:
            self._incoming.write_eof()

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.sock.sendall(self._outgoing.read())

    # the socket's own calls
    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        self.sock.setsockopt(level, option, value)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def host_key(host: str, port: int) -> str:
    """Return the ``HOST:PORT`` key of the known-hosts file (IPv6 compressed, in brackets).

    Raises:
        UsageError: empty host, host with white space or ``#``, or port not in 1..65535.
    """
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c.isspace() or c in "#[]" for c in host):
        raise UsageError(f"not a valid host name: {host!r}")
    if not 0 < port < 65536:
        raise UsageError(f"not a valid port: {port}")
    if ":" in host:
        try:
            host = ipaddress.IPv6Address(host).compressed
        except ValueError as exc:
            raise UsageError(f"not a valid host name: {host!r}") from exc
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class KnownHosts:
    """The known-hosts file of pinned server fingerprints (format: module docstring).

    The file is read again on each call, so several clients may share it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LocalFileError(f"cannot read {self.path}: {exc}") from exc
        lines = []
        for n, line in enumerate(raw.splitlines(keepends=True), 1):
            try:  # a BOM some editors put first would hide the first entry
                lines.append(line.decode("utf-8-sig" if n == 1 else "utf-8"))
            except UnicodeDecodeError as exc:
                raise UsageError(f"{self.path}, line {n}: not valid UTF-8") from exc
        return lines

    def _entries(self, lines: list[str]) -> list[tuple[int, str, str]]:
        """Return ``(line number, HOST:PORT, fingerprint)`` for each entry line."""
        entries = []
        for n, line in enumerate(lines, 1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            fields = text.split()
            try:
                host, sep, port = fields[0].rpartition(":")
                bare_v6 = ":" in host and not host.startswith("[")
                ascii_port = port.isascii() and port.isdigit()  # not "²" or "٣"
                if len(fields) != 2 or not sep or not ascii_port or bare_v6:
                    raise UsageError("expected HOST:PORT SHA256:...")
                key = host_key(host, int(port))
                fp = parse_fingerprint(fields[1])
            except UsageError as exc:
                raise UsageError(f"{self.path}, line {n}: malformed entry: {exc}") from None
            entries.append((n, key, fp))
        return entries

    def _find(self, key: str) -> tuple[int, str] | None:
        for n, k, fp in self._entries(self._lines()):
            if k == key:
                return n, fp
        return None

    def lookup(self, host: str, port: int) -> str | None:
        """Return the fingerprint pinned for ``host:port``, or None.

        Raises:
            UsageError: bad host or port, or a malformed file.
            LocalFileError: the file exists but cannot be read.
        """
        found = self._find(host_key(host, port))
        return found[1] if found else None

    def check(self, host: str, port: int, fp: str) -> bool:
        """Return True if ``fp`` is the fingerprint pinned for ``host:port``, False if none is.

        Raises:
            FingerprintMismatch: another fingerprint is pinned for ``host:port``.
            UsageError: bad host, port or fingerprint, or a malformed file.
            LocalFileError: the file exists but cannot be read.
        """
        key, fp = host_key(host, port), parse_fingerprint(fp)
        found = self._find(key)
        if found is None:
            return False
        n, pinned = found
        if pinned == fp:
            return True
        raise FingerprintMismatch(
            f"the TLS certificate of {key} has changed!\n"
            f"  pinned:  {pinned} ({self.path}, line {n})\n"
            f"  offered: {fp}\n"
            "Someone may be intercepting the connection, or the server got a new "
            f"certificate. If you expect the change, remove line {n} of {self.path} "
            "and connect again."
        )

    def add(self, host: str, port: int, fp: str) -> None:
        """Pin ``fp`` for ``host:port``, replacing any entry it already has.

        Raises:
            UsageError: bad host, port or fingerprint, or a malformed file.
            LocalFileError: the file or its directory cannot be read or written.
        """
        key, fp = host_key(host, port), parse_fingerprint(fp)
        entry = f"{key} {fp}\n"
        lines = self._lines()
        old = {n for n, k, _ in self._entries(lines) if k == key}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not old:
                prefix = "\n" if lines and not lines[-1].endswith("\n") else ""
                flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
                fd = os.open(self.path, flags, 0o600)
                with os.fdopen(fd, "ab") as f:
                    f.write((prefix + entry).encode("utf-8"))
                return
            first, new = min(old), []
            for n, line in enumerate(lines, 1):
                if n == first:
                    new.append(entry)
                elif n not in old:
                    new.append(line)
            _atomic_write(self.path, "".join(new).encode("utf-8"), 0o600)
        except OSError as exc:
            raise LocalFileError(f"cannot write {self.path}: {exc}") from exc


#: Asked whether to trust a server seen for the first time: (host:port, fingerprint).
TrustNew = Callable[[str, str], bool]


def open_client_tls(
    sock: socket.socket,
    host: str,
    port: int,
    pinned: str | None,
    cafile: Path | str | None,
    known_hosts: KnownHosts,
    trust_new: bool | TrustNew,
) -> tuple[TLSStream, str]:
    """Run the TLS handshake on ``sock``, verify the server; return the stream, its fingerprint.

    Verified by ``cafile`` (a CA bundle, host name checked), else by the ``pinned``
    fingerprint, else against ``known_hosts``, where an unknown server is pinned if
    ``trust_new`` is True or returns True.

    Raises:
        TLSVerifyError: not trusted (FingerprintMismatch: the pin differs).
        ConnectError: the handshake failed (TimeoutExpired: it took too long).
    """
    ctx = client_context(Path(cafile) if cafile else None)
    tls = TLSStream(sock, ctx, host if cafile else None)
    closed = f"{host}:{port} closed the connection during the TLS handshake"
    try:
        tls.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        raise TLSVerifyError(
            f"{host}:{port}: certificate not trusted: {exc.verify_message}"
        ) from None
    except ssl.SSLEOFError:
        raise ConnectError(f"{closed}; it may be full, or refusing this address") from None
    except ssl.SSLError as exc:
        if exc.reason == "WRONG_VERSION_NUMBER":
            raise ConnectError(
                f"TLS handshake with {host}:{port} failed: the server does not speak TLS; "
                "is it running with --plaintext?"
            ) from None
        raise ConnectError(f"TLS handshake with {host}:{port} failed: {exc}") from None
    except TimeoutError:
        raise TimeoutExpired(f"timed out in the TLS handshake with {host}:{port}") from None
    except OSError as exc:
        raise ConnectError(
            f"{closed} ({exc.strerror or exc}); it may be full, or refusing this address"
        ) from None
    fp = fingerprint(tls.peer_certificate())
    if cafile:
        return tls, fp
    if pinned is not None:
        if parse_fingerprint(pinned) != fp:
            tls.close()
            raise FingerprintMismatch(
                f"{host}:{port} presented {fp}, not the expected {parse_fingerprint(pinned)}"
            )
        return tls, fp
    hosts = known_hosts
    try:
        if not hosts.check(host, port, fp):
            label = host_key(host, port)
            accept = trust_new(label, fp) if callable(trust_new) else trust_new
            if not accept:
                raise TLSVerifyError(f"{label} is not a known host (fingerprint {fp})")
            hosts.add(host, port, fp)
    except BaseException:
        tls.close()
        raise
    return tls, fp
