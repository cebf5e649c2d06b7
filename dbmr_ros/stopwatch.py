"""Stage times of one call without making the GPU wait for them.

Synchronising at every stage boundary to read a clock would leave the GPU idle while the host
launches the next stage (on an H100, launching the Detector's network graph takes the host about
a millisecond). On CUDA a lap records an event in the stream instead, and the events are read
once, after the call's own final read-back; elsewhere a lap reads the host clock.
"""
from typing import Dict

import time

import torch


class Stopwatch:
    """`lap(name)` ends a stage begun at the previous lap (or at creation); `times_ms()` gives
    each name's total milliseconds (laps of one name add up)."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == 'cuda'
        self._names = []
        self._marks = [self._mark()]

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def lap(self, name: str) -> None:
        self._names.append(name)
        self._marks.append(self._mark())

    def times_ms(self) -> Dict[str, float]:
        """Waits for the last lap's work on CUDA (the caller has normally read its results by
        then, so nothing is left to wait for)."""
        if self.cuda:
            self._marks[-1].synchronize()
            durations = [a.elapsed_time(b) for a, b in zip(self._marks, self._marks[1:])]
        else:
            durations = [(b - a) * 1e3 for a, b in zip(self._marks, self._marks[1:])]
        times = {}
        for name, ms in zip(self._names, durations):
            times[name] = times.get(name, 0.0) + ms
        return times
