"""The node's hand-off, rate limit, fault throttling and frame counters, without DDS
(frame_worker.py, diagnostics.py)."""
import threading

from diagnostic_msgs.msg import DiagnosticStatus

from dbmr_ros.ros.diagnostics import FrameCounters
from dbmr_ros.ros.frame_worker import FaultThrottle, LatestWins, RateLimit


class FakeClock:
    """Seconds that advance only when the test says so (no sleeping)."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_latest_wins_replaces_and_counts_untaken_items():
    slot = LatestWins()
    assert slot.offer('a') is False
    assert slot.offer('b') is True  # 'a' was never taken: dropped
    assert slot.take() == 'b'
    assert slot.take(timeout=0) is None  # empty
    assert slot.offer('c') is False


def test_latest_wins_wakes_a_waiting_consumer_and_close_ends_it():
    slot, taken, started = LatestWins(), [], threading.Event()

    def consume():
        started.set()
        while True:
            item = slot.take()
            if item is None:
                return
            taken.append(item)
    consumer = threading.Thread(target=consume)
    consumer.start()
    started.wait(10)
    slot.offer(1)
    slot.close()
    consumer.join(10)
    assert not consumer.is_alive()
    assert taken in ([1], [])  # taken before the close, or discarded by it; never blocked
    assert slot.take() is None


def test_rate_limit_follows_a_parameter_that_changes():
    clock, hz = FakeClock(), {'value': 2.0}
    limit = RateLimit(lambda: hz['value'], clock)
    assert limit.allow()
    clock.now += 0.3
    assert not limit.allow()  # 0.3 s < 1 / 2 Hz
    clock.now += 0.25
    assert limit.allow()
    hz['value'] = 0.0  # no limit
    assert limit.allow() and limit.allow()


def test_fault_throttle_reports_each_fault_and_the_repeats_it_held_back():
    clock = FakeClock()
    throttle = FaultThrottle(period=2.0, clock=clock)
    assert throttle.report('bad encoding') == 'bad encoding'
    assert throttle.report('bad encoding') is None
    assert throttle.report('bad encoding') is None
    assert throttle.report('NaN cloud') == 'NaN cloud'  # another fault is not hidden
    clock.now += 2.5
    assert throttle.report('bad encoding') == 'bad encoding (2 more since last report)'
    assert throttle.report('bad encoding') is None


def test_frame_counters_and_the_diagnostic_status_they_give():
    clock = FakeClock()
    counters = FrameCounters(clock)
    status = counters.status('dbmr_detector', 'cpu', '/m.safetensors', None)
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.OK and status.message == 'running'
    assert values['input_rate_hz'] == '0.00' and values['processing_time_ms'] == 'n/a'
    for i in range(11):  # 11 pairs 0.1 s apart: 10 Hz; the second replaced the first
        counters.arrived(replaced_waiting=i == 1)
        clock.now += 0.1
    counters.done(40.0)
    counters.done(60.0)
    counters.rate_limited += 1
    values = {kv.key: kv.value for kv in counters.status('n', 'cpu', 'm', 0.5).values}
    assert values['input_rate_hz'] == '10.00' and values['processing_time_ms'] == '50.0'
    assert (values['frames_received'], values['frames_processed'], values['frames_dropped'],
            values['frames_rate_limited'], values['threshold']) == ('11', '2', '1', '1', '0.5')
    counters.error('frame 7 skipped: bad encoding')
    status = counters.status('n', 'cpu', 'm', 0.5)
    values = {kv.key: kv.value for kv in status.values}
    assert status.level == DiagnosticStatus.WARN and status.message == 'frames failing'
    assert values['frames_failed'] == '1'
    assert values['last_error'] == 'frame 7 skipped: bad encoding'
