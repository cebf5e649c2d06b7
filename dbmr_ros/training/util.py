"""Training plumbing: learning-rate schedule, RNG state for exact resume, atomic saves,
torch.distributed set-up, logging."""
import logging
import math
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from dbmr_ros.files import atomic_write

LOG = logging.getLogger('dbmr-train')


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 1 % at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def rng_state(generator: torch.Generator) -> dict:
    return {'torch': torch.get_rng_state(), 'generator': generator.get_state(),
            'numpy': torch.from_numpy(np.frombuffer(
                np.random.get_state()[1].astype('<u4').tobytes(), dtype=np.uint8).copy()),
            'python': random.getstate()[1]}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state['torch'])
    generator.set_state(state['generator'])
    keys = np.frombuffer(state['numpy'].numpy().tobytes(), dtype='<u4')
    np.random.set_state(('MT19937', keys, 624, 0, 0.0))
    random.setstate((3, tuple(state['python']), None))


def atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def distributed():
    """(rank, world_size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        backend = 'nccl' if torch.cuda.is_available() and os.environ.get(
            'DBMR_DIST_BACKEND', '') != 'gloo' else 'gloo'
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def broadcast_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers to every rank. DDP syncs them at the start of each forward, so after
    an epoch each rank still holds the BatchNorm statistics of its own last batch; the saved
    model (rank 0's) and every rank must agree."""
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def setup_logging(output: Path, rank: int) -> None:
    LOG.setLevel(logging.INFO)
    LOG.handlers.clear()
    if rank == 0:
        handler = logging.FileHandler(output / 'train.log')
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
        LOG.addHandler(handler)
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter('%(message)s'))
        LOG.addHandler(console)


def weights_digest(model) -> str:
    """SHA-1 of all parameters (DDP ranks must agree on it)."""
    import hashlib
    digest = hashlib.sha1()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
