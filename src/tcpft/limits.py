"""Every fixed limit of the wire protocol, by name.

These numbers are part of the wire protocol (docs/PROTOCOL.md, "Limits"): a peer
that exceeds one is sending a malformed frame. Tunable server settings (timeouts,
connection caps, penalties) live in :mod:`tcpft.config` instead.
"""

from __future__ import annotations

#: Bytes in a frame header: type (u8) + payload length (u32, big-endian).
FRAME_HEADER_SIZE = 5

#: Largest payload of any frame the server accepts before login (HELLO, LOGIN).
MAX_PRELOGIN_PAYLOAD = 4096

#: Largest payload of a control frame (anything but DATA and LIST_ENTRIES) after login.
MAX_CONTROL_PAYLOAD = 64 * 1024

#: Largest payload of a DATA or LIST_ENTRIES frame.
MAX_DATA_PAYLOAD = 1024 * 1024

#: Largest UTF-8 length of a user name.
MAX_USERNAME_BYTES = 64

#: Largest UTF-8 length of a password; longer ones are refused before hashing.
MAX_PASSWORD_BYTES = 1024

#: Largest UTF-8 length of a relative path on the wire.
MAX_PATH_BYTES = 4096

#: Largest UTF-8 length of one path component.
MAX_NAME_BYTES = 255

#: Largest UTF-8 length of the text of an ERROR frame.
MAX_ERROR_TEXT_BYTES = 1024

#: Largest UTF-8 length of the software string in HELLO and WELCOME.
MAX_SOFTWARE_BYTES = 128

#: Block size of the resume prefix digest (docs/PROTOCOL.md, "Resume").
RESUME_BLOCK_SIZE = 4 * 1024 * 1024

#: Bytes in a digest (SHA-256 or BLAKE3: both 32).
DIGEST_SIZE = 32

#: Most GETs a client may send ahead of the one in progress (protocol version 2).
MAX_GETS_AHEAD = 8

#: Most streamed uploads whose verdict a client may be waiting for (protocol version 4).
MAX_PUTS_AHEAD = 8
