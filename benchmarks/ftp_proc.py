"""A pyftpdlib FTP server in its own process (a baseline peer; needs pyftpdlib).

    python -m benchmarks.ftp_proc ROOT PORTFILE

Anonymous, read and write, on 127.0.0.1; the port is written to PORTFILE.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import warnings
from pathlib import Path

from .common import HOST, write_port_file


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ftp_proc")
    parser.add_argument("root")
    parser.add_argument("portfile")
    args = parser.parse_args(argv)

    from pyftpdlib.authorizers import DummyAuthorizer  # type: ignore[import-not-found]
    from pyftpdlib.handlers import FTPHandler  # type: ignore[import-not-found]
    from pyftpdlib.log import config_logging  # type: ignore[import-not-found]
    from pyftpdlib.servers import FTPServer  # type: ignore[import-not-found]

    config_logging(level=logging.WARNING)
    authorizer = DummyAuthorizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "write permissions assigned to anonymous user"
        authorizer.add_anonymous(str(Path(args.root).resolve()), perm="elradfmw")
    handler = FTPHandler
    handler.authorizer = authorizer
    server = FTPServer((HOST, 0), handler)
    server.max_cons = 512
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    write_port_file(Path(args.portfile), server.address[1])
    server.serve_forever(handle_exit=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
