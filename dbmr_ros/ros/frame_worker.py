"""The node's frame hand-off, rate limit and fault throttling: plain Python, no ROS.

Sensor callbacks must never wait for inference. They offer the newest synchronised pair to a
one-slot hand-off; a pair the worker has not taken yet is replaced (latest wins) and counted as
dropped, so latency stays bounded when inference is slower than the sensor.
"""
import math
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple


class LatestWins:
    """One slot between producer callbacks and one consumer thread."""

    def __init__(self):
        self._item: Any = None
        self._condition = threading.Condition()
        self._open = True

    def offer(self, item) -> bool:
        """Put `item` in the slot; True when it replaced one nobody took (a dropped frame)."""
        with self._condition:
            replaced = self._item is not None
            self._item = item
            self._condition.notify()
            return replaced

    def take(self, timeout: Optional[float] = None):
        """The newest item, waiting for one; None once closed (or after `timeout`)."""
        with self._condition:
            self._condition.wait_for(lambda: self._item is not None or not self._open,
                                     timeout)
            if not self._open:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake and end every take()."""
        with self._condition:
            self._open = False
            self._condition.notify_all()


class RateLimit:
    """At most `hz` accepted events per second (0: no limit); `hz` is read on every call, so it
    can change at run time."""

    def __init__(self, hz: Callable[[], float], clock: Callable[[], float] = time.monotonic):
        self.hz, self.clock = hz, clock
        self._last = -math.inf

    def allow(self) -> bool:
        rate, now = self.hz(), self.clock()
        if rate > 0 and now - self._last < 1.0 / rate:
            return False
        self._last = now
        return True


class FaultThrottle:
    """Each distinct fault is reported at most every `period` seconds, with the number of
    repeats held back since its last report: a stream of bad frames neither floods the log nor
    hides another fault."""

    def __init__(self, period: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.period, self.clock = period, clock
        self._seen: Dict[str, Tuple[float, int]] = {}

    def report(self, fault: str) -> Optional[str]:
        """The line to log for this occurrence of `fault`, or None while throttled."""
        now = self.clock()
        last, held_back = self._seen.get(fault, (-math.inf, 0))
        if now - last < self.period:
            self._seen[fault] = (last, held_back + 1)
            return None
        self._seen[fault] = (now, 0)
        return fault + (f' ({held_back} more since last report)' if held_back else '')
