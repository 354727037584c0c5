"""The one exception tree of tcpft, and the wire error codes it maps to.

Every error tcpft raises derives from :class:`TcpftError`. Errors that travel on the
wire carry an :class:`ErrorCode`; :func:`error_from_wire` turns a received ERROR frame
back into the matching class, so both sides speak of a failure in the same terms.
Each class also names the exit status the command line uses for it.

::

    TcpftError
    ├── UsageError                 bad arguments, bad config file            exit 2
    ├── ConnectError               could not reach or talk to the server     exit 3
    │   ├── ConnectionBroken       cut, reset or EOF in the middle           exit 3
    │   ├── TimeoutExpired         a deadline passed (idle, stall)           exit 3
    │   │   └── LoginTimeout       the login phase took too long             exit 3
    │   ├── TooManyConnections     the server is full for us                 exit 3
    │   ├── Penalized              our address is refused for a while        exit 3
    │   └── ShuttingDown           the server is stopping                    exit 3
    ├── AuthFailed                 wrong user or password                    exit 4
    ├── TLSVerifyError             TLS trust failed                          exit 5
    │   └── FingerprintMismatch    pinned fingerprint changed                exit 5
    ├── ProtocolError              the wire rules were broken                exit 10
    │   ├── LocalProtocolError     we were about to break them (a bug)
    │   ├── RemoteProtocolError    the peer broke them
    │   │   └── FrameTooLarge      announced length over the state's limit
    │   └── UnsupportedVersion     no protocol version in common
    ├── RemoteFileError            the server refused a file request
    │   ├── InvalidName            not a servable name, or cannot be opened  exit 6
    │   ├── PermissionDenied       the account may not do this               exit 8
    │   ├── AlreadyExists          exists and no --force                     exit 9
    │   ├── TooLarge               over the upload size limit                exit 11
    │   ├── NoSpace                the server's disk cannot take it          exit 11
    │   └── RemoteIOError          the server could not read or write it     exit 11
    ├── IntegrityError             size or digest does not match             exit 7
    │   └── FileChanged            the file changed during the transfer      exit 7
    ├── LocalFileError             our own disk failed us (full, unwritable) exit 11
    └── InternalError              the server failed (its logs say why)      exit 1
"""

from __future__ import annotations

import enum

from .limits import MAX_ERROR_TEXT_BYTES


class ErrorCode(enum.IntEnum):
    """Error codes carried by the ERROR frame (u16). See docs/PROTOCOL.md."""

    PROTOCOL_ERROR = 1
    UNSUPPORTED_VERSION = 2
    FRAME_TOO_LARGE = 3
    AUTH_FAILED = 10
    PENALIZED = 11
    LOGIN_TIMEOUT = 12
    IDLE_TIMEOUT = 13
    TOO_MANY_CONNECTIONS = 14
    INVALID_NAME = 20
    PERMISSION_DENIED = 21
    ALREADY_EXISTS = 22
    TOO_LARGE = 23
    NO_SPACE = 24
    FILE_CHANGED = 25
    DIGEST_MISMATCH = 26
    IO_ERROR = 27
    SHUTTING_DOWN = 30
    INTERNAL_ERROR = 31


#: Codes after which the sender closes the connection. Any other code leaves the
#: session usable (the state machine says where it continues).
FATAL_CODES = frozenset(
    {
        ErrorCode.PROTOCOL_ERROR,
        ErrorCode.UNSUPPORTED_VERSION,
        ErrorCode.FRAME_TOO_LARGE,
        ErrorCode.PENALIZED,
        ErrorCode.LOGIN_TIMEOUT,
        ErrorCode.IDLE_TIMEOUT,
        ErrorCode.TOO_MANY_CONNECTIONS,
        ErrorCode.SHUTTING_DOWN,
        ErrorCode.INTERNAL_ERROR,
    }
)


def is_fatal(code: int) -> bool:
    """Return True when an ERROR with ``code`` ends the connection.

    Unknown codes are fatal: a peer that does not know a code cannot know where
    the conversation goes on.
    """
    try:
        return ErrorCode(code) in FATAL_CODES
    except ValueError:
        return True


class TcpftError(Exception):
    """Root of every error tcpft raises."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    exit_code: int = 1

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class UsageError(TcpftError):
    """Bad arguments or configuration."""

    exit_code = 2


class ConnectError(TcpftError):
    """Could not reach or talk to the server."""

    exit_code = 3


class ConnectionBroken(ConnectError):
    """The connection was cut before the exchange was complete."""


class TimeoutExpired(ConnectError):
    """A deadline passed."""

    code = ErrorCode.IDLE_TIMEOUT


class LoginTimeout(TimeoutExpired):
    """The login phase took too long."""

    code = ErrorCode.LOGIN_TIMEOUT


class TooManyConnections(ConnectError):
    """The server has no room for another connection from us."""

    code = ErrorCode.TOO_MANY_CONNECTIONS


class Penalized(ConnectError):
    """Too many failed logins from this address; try again later."""

    code = ErrorCode.PENALIZED


class ShuttingDown(ConnectError):
    """The server is shutting down."""

    code = ErrorCode.SHUTTING_DOWN


class AuthFailed(TcpftError):
    """Login failed: unknown user or wrong password."""

    code = ErrorCode.AUTH_FAILED
    exit_code = 4


class TLSVerifyError(TcpftError):
    """The server's TLS identity could not be verified."""

    exit_code = 5


class FingerprintMismatch(TLSVerifyError):
    """The server's certificate fingerprint differs from the pinned one."""


class ProtocolError(TcpftError):
    """The rules of the wire protocol were broken."""

    code = ErrorCode.PROTOCOL_ERROR
    exit_code = 10


class LocalProtocolError(ProtocolError):
    """We were about to send something the protocol forbids (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed or out of order."""


class FrameTooLarge(RemoteProtocolError):
    """A frame announced a length over the limit of the current state."""

    code = ErrorCode.FRAME_TOO_LARGE


class UnsupportedVersion(ProtocolError):
    """Client and server share no protocol version."""

    code = ErrorCode.UNSUPPORTED_VERSION


class RemoteFileError(TcpftError):
    """The server refused a file request."""


class InvalidName(RemoteFileError):
    """The name is not a file the server can serve."""

    code = ErrorCode.INVALID_NAME
    exit_code = 6


class PermissionDenied(RemoteFileError):
    """This account may not do that."""

    code = ErrorCode.PERMISSION_DENIED
    exit_code = 8


class AlreadyExists(RemoteFileError):
    """The target exists; pass force to overwrite it."""

    code = ErrorCode.ALREADY_EXISTS
    exit_code = 9


class TooLarge(RemoteFileError):
    """The file is larger than the server accepts."""

    code = ErrorCode.TOO_LARGE
    exit_code = 11


class NoSpace(RemoteFileError):
    """The server's disk has no room for the file."""

    code = ErrorCode.NO_SPACE
    exit_code = 11


class IntegrityError(TcpftError):
    """The received data does not match the announced size or digest."""

    code = ErrorCode.DIGEST_MISMATCH
    exit_code = 7


class FileChanged(IntegrityError):
    """The file changed while it was being sent."""

    code = ErrorCode.FILE_CHANGED


class LocalFileError(TcpftError):
    """A local file could not be read or written."""

    code = ErrorCode.IO_ERROR
    exit_code = 11


class RemoteIOError(RemoteFileError):
    """The server could not read or write the file."""

    code = ErrorCode.IO_ERROR
    exit_code = 11


class InternalError(TcpftError):
    """The peer hit an internal error."""

    code = ErrorCode.INTERNAL_ERROR


_BY_CODE: dict[ErrorCode, type[TcpftError]] = {
    ErrorCode.PROTOCOL_ERROR: RemoteProtocolError,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersion,
    ErrorCode.FRAME_TOO_LARGE: RemoteProtocolError,
    ErrorCode.AUTH_FAILED: AuthFailed,
    ErrorCode.PENALIZED: Penalized,
    ErrorCode.LOGIN_TIMEOUT: LoginTimeout,
    ErrorCode.IDLE_TIMEOUT: TimeoutExpired,
    ErrorCode.TOO_MANY_CONNECTIONS: TooManyConnections,
    ErrorCode.INVALID_NAME: InvalidName,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
    ErrorCode.ALREADY_EXISTS: AlreadyExists,
    ErrorCode.TOO_LARGE: TooLarge,
    ErrorCode.NO_SPACE: NoSpace,
    ErrorCode.FILE_CHANGED: FileChanged,
    ErrorCode.DIGEST_MISMATCH: IntegrityError,
    ErrorCode.IO_ERROR: RemoteIOError,
    ErrorCode.SHUTTING_DOWN: ShuttingDown,
    ErrorCode.INTERNAL_ERROR: InternalError,
}


def error_from_wire(code: int, message: str) -> TcpftError:
    """Build the exception matching an ERROR frame received from the peer.

    A text longer than ``MAX_ERROR_TEXT_BYTES`` (which senders do not pass) is cut
    there, so that a peer cannot fill a terminal or a log with one error.
    """
    if len(message) > MAX_ERROR_TEXT_BYTES:
        message = message[:MAX_ERROR_TEXT_BYTES] + "..."
    try:
        cls = _BY_CODE[ErrorCode(code)]
    except (ValueError, KeyError):
        return RemoteProtocolError(f"peer sent unknown error code {code}: {message}")
    return cls(message)
