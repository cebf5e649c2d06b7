"""What the node counts about its frames, and the /diagnostics status built from it.

ROS-free apart from the message types, so the counting and the status rules are tested without
DDS (test/test_frame_worker.py).
"""
import time
from collections import deque
from typing import Callable, Optional

from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

WINDOW = 50  # frames behind the input rate and the mean processing time


class FrameCounters:
    """Frames received, processed, dropped (latest wins), rate limited and failed, the last
    error, and the recent arrival times and processing times."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.received = self.processed = self.dropped = self.rate_limited = self.failed = 0
        self.last_error = ''
        self.arrivals = deque(maxlen=WINDOW)
        self.processing_ms = deque(maxlen=WINDOW)

    def arrived(self, replaced_waiting: bool) -> None:
        """A synchronised pair arrived; `replaced_waiting`: it replaced one never processed."""
        self.received += 1
        self.arrivals.append(self.clock())
        self.dropped += int(replaced_waiting)

    def done(self, processing_ms: float) -> None:
        self.processed += 1
        self.processing_ms.append(processing_ms)

    def error(self, text: str) -> None:
        self.failed += 1
        self.last_error = text

    def input_rate_hz(self) -> float:
        """Synchronised pairs per second over the last WINDOW arrivals (0 until two)."""
        span = self.arrivals[-1] - self.arrivals[0] if len(self.arrivals) > 1 else 0.0
        return (len(self.arrivals) - 1) / span if span > 0 else 0.0

    def status(self, name: str, device: str, model_path: str,
               threshold: Optional[float]) -> DiagnosticStatus:
        """WARN with 'frames failing' once any frame failed, else OK 'running'."""
        failing = self.failed > 0
        timings = list(self.processing_ms)
        values = {'model_loaded': 'true', 'model_path': model_path, 'device': device,
                  'threshold': str(threshold),
                  'input_rate_hz': f'{self.input_rate_hz():.2f}',
                  'processing_time_ms': f'{sum(timings) / len(timings):.1f}' if timings
                  else 'n/a',
                  'frames_received': str(self.received),
                  'frames_processed': str(self.processed),
                  'frames_dropped': str(self.dropped),
                  'frames_rate_limited': str(self.rate_limited),
                  'frames_failed': str(self.failed),
                  'last_error': self.last_error}
        return DiagnosticStatus(
            name=f'{name}: anomaly detection', hardware_id=device,
            level=DiagnosticStatus.WARN if failing else DiagnosticStatus.OK,
            message='frames failing' if failing else 'running',
            values=[KeyValue(key=k, value=v) for k, v in values.items()])
