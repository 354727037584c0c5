"""``python -m tcpft``: the command line."""

from .cli import main

raise SystemExit(main())
