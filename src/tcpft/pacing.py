"""Rate limiting without I/O: a token bucket that says how long to wait.

Both drivers use it: the asyncio server sleeps with ``asyncio.sleep``, the blocking
client with ``time.sleep``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Pacer:
    """Keeps a byte stream at or under ``rate`` bytes per second.

    A burst of up to ``burst`` bytes (default: a quarter second's worth, at least 1 MiB)
    may go at once; after that, :meth:`delay` answers how long the caller should wait
    before sending ``n`` more bytes.
    """

    def __init__(
        self,
        rate: int,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate // 4, 1024 * 1024)
        self._clock = clock
        self._tokens = float(self.burst)
        self._last = clock()

    @property
    def piece(self) -> int:
        """The most bytes to move between two waits: a quarter second's worth, at least 4 KiB.

        Waiting before each piece, not after each frame, keeps a slow stream moving: at
        10 KiB/s a 512 KiB frame followed by its wait would leave the peer without a
        byte for 50 s, past its timeouts.
        """
        return max(self.rate // 4, 4096)

    def delay(self, n: int) -> float:
        """Take ``n`` bytes from the bucket; return the seconds to wait before sending them."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= n
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate
