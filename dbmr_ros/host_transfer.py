"""Frames to the device and maps back, through page-locked host memory on CUDA.

Copies between a GPU and pageable memory go through a staging buffer of the driver's, several
times slower than from page-locked memory; torch's caching host allocator hands out page-locked
blocks without a new allocation per call.
"""
from typing import Sequence

import numpy as np
import torch


def stack_on_device(frames: Sequence[np.ndarray], dtype, device: torch.device) -> torch.Tensor:
    """Arrays of one shape -> (B, ...) tensor of `dtype` on `device`: stacked (and cast) straight
    into page-locked memory for CUDA, one host copy, then copied without blocking."""
    shape = (len(frames),) + np.shape(frames[0])
    host = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype,
                       pin_memory=torch.device(device).type == 'cuda')
    np.stack(frames, out=host.numpy(), casting='same_kind')  # float64 xyz: cast here
    return host.to(device, non_blocking=True)


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; from CUDA through page-locked memory."""
    if tensor.device.type != 'cuda':
        return tensor.numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host.numpy()
