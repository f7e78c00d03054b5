"""Token throughput over a sliding window, for engines that count tokens as they stream."""

from __future__ import annotations

import collections
import time


class TokenMeter:
    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self.total = 0
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def add(self, tokens: int) -> None:
        if tokens <= 0:
            return
        self.total += tokens
        now = time.monotonic()
        self._recent.append((now, tokens))
        while self._recent and self._recent[0][0] < now - self.window_s:
            self._recent.popleft()

    def per_second(self) -> float:
        cutoff = time.monotonic() - self.window_s
        return sum(k for t, k in self._recent if t >= cutoff) / self.window_s
