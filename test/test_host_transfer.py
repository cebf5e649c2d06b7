"""Raw frames to the device (`host_transfer.stack_on_device`): the threaded stacking of a large
batch gives np.stack's array, cast as np.stack casts; frames of several shapes are refused."""
import numpy as np
import pytest
import torch

from dbmr_ros.host_transfer import PARALLEL_BYTES, stack_on_device, to_host

DEVICES = ['cpu', pytest.param('cuda', marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason='needs a CUDA device'))]


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('workers', [1, 2, 3, None])
def test_a_large_batch_stacks_as_np_stack_does(device, workers):
    rng = np.random.default_rng(0)
    clouds = [rng.normal(size=(400, 400, 3)) for _ in range(10)]  # float64, cast to float32
    assert 10 * 400 * 400 * 3 * 4 > PARALLEL_BYTES                   # the threaded path
    stacked = stack_on_device(clouds, np.float32, torch.device(device), workers)
    assert stacked.dtype == torch.float32 and stacked.device.type == device
    assert np.array_equal(to_host(stacked), np.stack(clouds).astype(np.float32))
    images = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]   # small
    assert np.array_equal(to_host(stack_on_device(images, np.uint8, torch.device(device),
                                                  workers)), np.stack(images))


def test_frames_of_several_shapes_are_refused():
    frames = [np.zeros((400, 400, 3)) for _ in range(6)] + [np.zeros((1, 400, 3))]
    with pytest.raises(ValueError, match='several shapes'):
        stack_on_device(frames, np.float32, torch.device('cpu'))
