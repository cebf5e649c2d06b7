"""Frames to the device and maps back, through page-locked host memory on CUDA.

Copies between a GPU and pageable memory go through a staging buffer of the driver's, several
times slower than from page-locked memory; torch's caching host allocator hands out page-locked
blocks without a new allocation per call.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
import torch

# Below this many bytes one thread stacks faster than it hands the frames out (a 400 x 400
# cloud is 1.9 MB); above, the copies run on parallel threads (numpy releases the GIL in them).
PARALLEL_BYTES = 16 << 20
POOL_SIZE = min(os.cpu_count() or 1, 8)
_pool: Optional[ThreadPoolExecutor] = None


def stack_on_device(frames: Sequence[np.ndarray], dtype, device: torch.device,
                    workers: Optional[int] = None) -> torch.Tensor:
    """Arrays of one shape -> (B, ...) tensor of `dtype` on `device`: stacked (and cast) straight
    into page-locked memory for CUDA, one host copy per frame, then copied without blocking.
    A large batch is stacked on `workers` threads (default: POOL_SIZE, one per core up to 8)."""
    shape = np.shape(frames[0])
    if any(np.shape(frame) != shape for frame in frames):
        raise ValueError(f'frames of several shapes: {sorted({np.shape(f) for f in frames})}')
    host = torch.empty((len(frames),) + shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype,
                       pin_memory=torch.device(device).type == 'cuda')
    out = host.numpy()
    workers = min(workers or POOL_SIZE, POOL_SIZE, len(frames))
    if workers == 1 or out.nbytes < PARALLEL_BYTES:
        np.stack(frames, out=out, casting='same_kind')   # float64 xyz: cast here
    else:
        def copy(indices):
            for i in indices:
                np.copyto(out[i], frames[i], casting='same_kind')
        list(_threads().map(copy, np.array_split(np.arange(len(frames)), workers)))
    return host.to(device, non_blocking=True)


def _threads() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(POOL_SIZE, 'dbmr-stack')
    return _pool


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A tensor as a numpy array; from CUDA through page-locked memory."""
    if tensor.device.type != 'cuda':
        return tensor.numpy()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host.numpy()
