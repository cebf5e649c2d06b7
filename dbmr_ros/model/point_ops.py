"""Point cloud primitives: farthest point sampling, k nearest neighbours, Chamfer distance.

The CUDA kernels of pointnet2_ops and knn_cuda are used when importable and the tensors are on
CUDA; otherwise pure torch (farthest point sampling on the CPU: numpy, the same indices).
Importing this module never requires CUDA, Triton or the extensions.
Without pointnet2_ops, farthest point sampling on CUDA is our Triton kernel (`fps_kernel`, one
launch per call) where Triton is importable, else the torch loop recorded once per input shape
as a CUDA graph and replayed (`cuda_graphs`): either way not the ~6 small kernels per sampled
point that the GPU would otherwise wait on Python for (1024 samples: ~6000 launches).
"""
import functools

import numpy as np
import torch

from dbmr_ros.cuda_graphs import GraphedFunction

try:  # optional CUDA extensions
    from pointnet2_ops.pointnet2_utils import furthest_point_sample as _fps_cuda
except ImportError:
    _fps_cuda = None
try:
    from knn_cuda import KNN as _KnnCuda
except ImportError:
    _KnnCuda = None


def fps(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Farthest point sampling.

    points: (B, N, 3). Returns indices (B, S) long, starting at index 0 like the CUDA kernel.
    """
    if _fps_cuda is not None and points.is_cuda:
        return _fps_cuda(points.float().contiguous(), num_samples).long()
    if points.is_cuda:
        kernel = triton_fps()
        if kernel is not None and points.shape[1] <= kernel.MAX_POINTS:
            return kernel.farthest_point_sample(points, num_samples)
        return fps_graphed(points, num_samples)
    if points.device.type == 'cpu' and points.dtype in (torch.float32, torch.float64):
        return fps_numpy(points, num_samples)
    return fps_torch(points, num_samples)


# `bench_model.py --no-triton-fps` turns the kernel off to measure what it brings.
use_triton_fps = True


@functools.cache
def _import_fps_kernel():
    try:  # imported on first use on CUDA only: the CPU paths never load Triton
        from dbmr_ros.model import fps_kernel
    except ImportError:
        return None
    return fps_kernel


def triton_fps():
    """The `fps_kernel` module where Triton is importable and enabled, else None."""
    return _import_fps_kernel() if use_triton_fps else None


def fps_method(device: torch.device | str) -> str:
    """What `fps` runs for tensors on `device` (clouds up to the kernel's size), for logs."""
    if torch.device(device).type != 'cuda':
        return 'torch loop'
    if _fps_cuda is not None:
        return 'pointnet2_ops kernel'
    return 'Triton kernel' if triton_fps() is not None else 'torch loop as a CUDA graph'


def fps_torch(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    batch, n, _ = points.shape
    device = points.device
    coords = points.detach().transpose(1, 2).contiguous()                # (B, 3, N)
    indices = torch.zeros(batch, num_samples, dtype=torch.long, device=device)
    farthest = torch.zeros(batch, 1, dtype=torch.long, device=device)
    min_dist = torch.full((batch, n), float('inf'), device=device, dtype=points.dtype)
    offsets, dist = torch.empty_like(coords), torch.empty_like(min_dist)
    for i in range(num_samples):  # a loop over samples, never over the batch
        indices[:, i:i + 1] = farthest
        centre = torch.gather(coords, 2, farthest[:, None].expand(-1, 3, 1))  # (B, 3, 1)
        # In place into preallocated buffers: the loop is bound by per-op overhead (2x faster).
        torch.sub(coords, centre, out=offsets).square_()
        torch.minimum(min_dist, torch.sum(offsets, 1, out=dist), out=min_dist)
        farthest = min_dist.argmax(-1, keepdim=True)
    return indices


def fps_numpy(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """`fps_torch`'s loop in numpy, for CPU tensors: bit for bit the same indices (the same
    float operations in the same order, the first of tied maxima), 2.4 times faster at 4096
    points, where each of the loop's few operations costs torch more to dispatch than to
    compute (1.2 against 2.9 ms a frame)."""
    coords = np.ascontiguousarray(points.detach().numpy().transpose(0, 2, 1))   # (B, 3, N)
    batch, _, n = coords.shape
    rows = np.arange(batch)
    indices = np.zeros((batch, num_samples), dtype=np.int64)
    farthest = np.zeros(batch, dtype=np.int64)
    min_dist = np.full((batch, n), np.inf, dtype=coords.dtype)
    offsets, dist = np.empty_like(coords), np.empty_like(min_dist)
    for i in range(num_samples):  # a loop over samples, never over the batch
        indices[:, i] = farthest
        np.subtract(coords, coords[rows, :, farthest][:, :, None], out=offsets)
        np.square(offsets, out=offsets)
        # torch's sum over the 3 coordinates, in its order: (x + y) + z.
        np.add(offsets[:, 0], offsets[:, 1], out=dist)
        np.add(dist, offsets[:, 2], out=dist)
        np.minimum(min_dist, dist, out=min_dist)
        farthest = min_dist.argmax(-1)
    return torch.from_numpy(indices)


# Many batch shapes (training's last batch, the Detector's batches): up to 16 graphs.
_fps_graphs = GraphedFunction(fps_torch, 'farthest point sampling', max_graphs=16)


def fps_graphed(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """`fps_torch` on CUDA as a replayed CUDA graph (the same indices); inside a graph that is
    being recorded, the loop itself is recorded."""
    return _fps_graphs(points.detach(), num_samples=num_samples).clone()


def knn(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (B, S, k) of the k nearest `points` (B, N, 3) of each query (B, S, 3), nearest
    first."""
    if _KnnCuda is not None and points.is_cuda:
        _, idx = _KnnCuda(k=k, transpose_mode=True)(points.float(), queries.float())
        return idx.long()
    return knn_torch(points, queries, k)


def knn_torch(points: torch.Tensor, queries: torch.Tensor, k: int) -> torch.Tensor:
    distances = torch.cdist(queries, points)                              # (B, S, N)
    return distances.topk(k, dim=-1, largest=False).indices


def gather(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """values (B, N, C), indices (B, ...) -> (B, ..., C)."""
    batch = values.shape[0]
    flat = indices.reshape(batch, -1)
    out = torch.gather(values, 1, flat.unsqueeze(-1).expand(-1, -1, values.shape[-1]))
    return out.reshape(*indices.shape, values.shape[-1])


def chamfer_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Point-MAE's L2 Chamfer distance per set: mean squared distance to the nearest point of the
    other set, both ways, summed. a: (M, P, 3), b: (M, Q, 3) -> (M,)."""
    d = torch.cdist(a, b) ** 2
    return d.min(dim=2).values.mean(dim=1) + d.min(dim=1).values.mean(dim=1)
