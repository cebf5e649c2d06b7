"""atomic_write: the user's file is the old one or the new one, never half of either."""
import numpy as np
import pytest

from dbmr_ros.files import atomic_write


def test_atomic_write_replaces_and_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / 'cache.npy'
    atomic_write(path, lambda tmp: np.save(tmp, np.arange(3)))
    np.testing.assert_array_equal(np.load(path), np.arange(3))  # no '.npy' added twice

    def crash(tmp):
        tmp.write_bytes(b'half')
        raise OSError('disk full')
    with pytest.raises(OSError, match='disk full'):
        atomic_write(path, crash)
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['cache.npy']  # no temporary left
