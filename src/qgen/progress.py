"""When a long computation logs its progress: a clock that is due every few seconds, and durations as text."""

from __future__ import annotations

import time


class ProgressClock:
    """Elapsed time since construction, and whether ``every_s`` seconds have passed since the last report.

    One ``time.perf_counter`` call per :meth:`due`: cheap enough to ask once per batch.
    """

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self.start = self.last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def due(self) -> bool:
        """Whether a report is due; a ``True`` answer starts the next interval."""
        now = time.perf_counter()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True


def duration(seconds: float) -> str:
    """``seconds`` as ``12s``, ``3m05s`` or ``2h07m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
