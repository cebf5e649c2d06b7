"""Approximate-time synchronisation on stamp sequences (message_filters semantics)."""
import pytest

from dbmr_ros.ros.sync import ApproximateTimeSync

MS = 1_000_000


def run(events, queue_size=10, slop=0.01):
    pairs, resets = [], []
    sync = ApproximateTimeSync(2, queue_size, slop, lambda a, b: pairs.append((a, b)),
                               on_reset=lambda: resets.append(True))
    for stream, stamp in events:
        sync.add(stream, stamp * MS, f'{"ic"[stream]}{stamp}')
    return pairs, resets


def test_pairs_within_slop():
    pairs, _ = run([(0, 0), (1, 3), (0, 100), (1, 104), (0, 200), (1, 230)])
    assert pairs == [('i0', 'c3'), ('i100', 'c104')]  # 30 ms apart is beyond a 10 ms slop


def test_closest_stamp_wins():
    pairs, _ = run([(0, 100), (0, 106), (1, 105)])
    assert pairs == [('i106', 'c105')]
    pairs, _ = run([(1, 10), (1, 14), (0, 13)])
    assert pairs == [('i13', 'c14')]


def test_slop_is_strict_like_message_filters():
    pairs, _ = run([(0, 0), (1, 10)], slop=0.01)
    assert pairs == []


def test_matched_messages_leave_the_queue():
    pairs, _ = run([(0, 0), (1, 1), (1, 2)])
    assert pairs == [('i0', 'c1')]  # i0 is consumed and cannot pair again with c2


def test_queue_size_drops_oldest():
    pairs, _ = run([(0, 0), (0, 50), (0, 100), (1, 1)], queue_size=2)
    assert pairs == []  # i0 fell out of a queue of 2
    pairs, _ = run([(0, 0), (0, 50), (0, 100), (1, 99)], queue_size=2)
    assert pairs == [('i100', 'c99')]


def test_stamps_going_backwards_reset():
    # A looping bag: full queues of late stamps, then the stamps start again from 0. Without a
    # reset the new, smaller stamps are the oldest in a full queue and are evicted at once, so
    # nothing would ever pair again.
    before = [(0, 1000), (0, 1100), (1, 1050), (1, 1150)]
    pairs, resets = run(before + [(0, 0), (1, 1), (0, 100), (1, 101)], queue_size=2)
    assert resets == [True] and pairs == [('i0', 'c1'), ('i100', 'c101')]


def test_invalid_arguments():
    with pytest.raises(ValueError):
        ApproximateTimeSync(2, 0, 0.1, print)
    with pytest.raises(ValueError):
        ApproximateTimeSync(2, 1, -0.1, print)
