"""Approximate-time synchronisation of several input streams by header stamp.

The same behaviour as message_filters' Python ApproximateTimeSynchronizer (used instead where
message_filters is importable): each stream keeps a queue of its newest `queue_size` messages
keyed by stamp; a new message is matched against messages of the other streams within `slop`,
trying the closest stamps first, and a set fires when all its stamps lie within `slop` of each
other (strictly less, as message_filters does), after which its messages leave the queues.
Additionally, a stamp older than the newest one already seen on the same stream (a looping bag,
a restarted sensor, a clock jump) clears every queue, so stale messages never pair with new ones.
"""
import itertools
import threading
from typing import Callable, Dict, List, Optional


class ApproximateTimeSync:
    def __init__(self, num_streams: int, queue_size: int, slop: float,
                 callback: Callable[..., None], on_reset: Optional[Callable[[], None]] = None):
        if queue_size < 1:
            raise ValueError('queue_size must be at least 1')
        if slop < 0:
            raise ValueError('slop must not be negative')
        self.queue_size = queue_size
        self.slop_ns = int(round(slop * 1e9))
        self.callback = callback
        self.on_reset = on_reset
        self.queues: List[Dict[int, object]] = [{} for _ in range(num_streams)]
        self.newest: List[Optional[int]] = [None] * num_streams
        self.lock = threading.Lock()

    def reset(self) -> None:
        with self.lock:
            self._clear()

    def _clear(self) -> None:
        for queue in self.queues:
            queue.clear()
        self.newest = [None] * len(self.queues)

    def add(self, index: int, stamp_ns: int, msg) -> None:
        """Offer a message of stream `index` with header stamp `stamp_ns` (nanoseconds)."""
        matched = None
        with self.lock:
            if self.newest[index] is not None and stamp_ns < self.newest[index]:
                self._clear()
                if self.on_reset is not None:
                    self.on_reset()
            self.newest[index] = stamp_ns
            queue = self.queues[index]
            queue[stamp_ns] = msg
            while len(queue) > self.queue_size:
                del queue[min(queue)]
            candidates = []
            for other, other_queue in enumerate(self.queues):
                if other == index:
                    continue
                near = sorted((abs(s - stamp_ns), s) for s in other_queue
                              if abs(s - stamp_ns) <= self.slop_ns)
                if not near:
                    return
                candidates.append([s for _, s in near])
            for combination in itertools.product(*candidates):
                stamps = list(combination)
                stamps.insert(index, stamp_ns)
                if max(stamps) - min(stamps) < self.slop_ns or self.slop_ns == 0 and \
                        max(stamps) == min(stamps):
                    matched = [q.pop(s) for q, s in zip(self.queues, stamps)]
                    break
        if matched is not None:
            self.callback(*matched)
