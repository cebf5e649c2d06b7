"""The node's hand-off, rate limit and fault throttling, without DDS (frame_worker.py)."""
import threading

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
