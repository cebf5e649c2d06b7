"""atomic_write: the user's file is the old one or the new one, never half of either; and
refuse_existing_output: an output the user has is never replaced unless asked."""
import numpy as np
import pytest

from dbmr_ros.files import atomic_write, refuse_existing_output


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


def test_an_existing_output_is_replaced_only_when_asked(tmp_path):
    empty, folder, file_ = tmp_path / 'empty', tmp_path / 'run', tmp_path / 'model.safetensors'
    empty.mkdir()
    folder.mkdir()
    (folder / 'train.log').write_text('mine')
    file_.write_bytes(b'weights')
    assert refuse_existing_output(tmp_path / 'new') == tmp_path / 'new'  # nothing there
    assert refuse_existing_output(empty) == empty                        # nothing to lose
    for path in (folder, file_):
        with pytest.raises(FileExistsError, match='already holds files; pass --overwrite'):
            refuse_existing_output(path)
        assert refuse_existing_output(path, replace=True) == path
    with pytest.raises(FileExistsError, match='already holds a bag; choose another path'):
        refuse_existing_output(folder, flag='', holds='a bag')
    assert (folder / 'train.log').read_text() == 'mine' and file_.read_bytes() == b'weights'
