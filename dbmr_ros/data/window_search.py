"""The window searches of `preprocess_batched`: which grid pixels have a kept one closer than
eps in their window (the joins), and which full-resolution pixels have a kept grid point closer
than eps among the grid cells around their nearest one (the near step).

Torch versions in fixed shapes for every device; on CUDA, where Triton is importable, the same
searches as one kernel launch each (`window_kernels`), with the same results. Both are bounded
windows where the numpy reference searches the whole cloud: the bounds and their agreement with
it are stated in `preprocess_batched` and tested.
"""
from typing import Callable

import torch
import torch.nn.functional as F

JOIN_RADIUS = 8   # grid cells searched for a joining component (24 px at stride 3)
NEAR_RADIUS = 3   # grid cells around a pixel's nearest grid pixel searched for the cluster
# `bench_preprocess.py --no-triton` turns the kernels off to measure what they bring.
use_triton = True


def _kernels(device: torch.device):
    """The `window_kernels` module on CUDA where Triton is importable and enabled, else None
    (the CPU paths never import Triton)."""
    if device.type != 'cuda' or not use_triton:
        return None
    try:
        from dbmr_ros.data import window_kernels
    except ImportError:
        return None
    return window_kernels


def touching_search(xyz: torch.Tensor, valid: torch.Tensor,
                    eps: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Grid (B, H, W, 3), (B, H, W) -> a function of kept (B, H, W) bool giving (B, H, W) bool:
    the valid pixels with a kept pixel closer than eps within JOIN_RADIUS cells. Asked once
    per joining wave; the torch version works out the window's close pairs once for all."""
    kernels = _kernels(xyz.device)
    if kernels is not None:
        return kernels.touching_search(xyz, valid, eps, JOIN_RADIUS)
    close = _close_pairs(xyz, valid, eps)
    return lambda kept: _touching(close, kept)


def _close_pairs(xyz: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """(B, H, W, 3), (B, H, W) -> (B, H, W, K, K) bool, K = 2 JOIN_RADIUS + 1: which pixels of
    each valid pixel's window are valid and closer than eps (computed a row of offsets at a
    time: the whole window's differences at once would take 900x the grid's memory)."""
    radius, size = JOIN_RADIUS, 2 * JOIN_RADIUS + 1
    height = valid.shape[1]
    padded = F.pad(xyz.permute(0, 3, 1, 2), (radius,) * 4)                  # (B, 3, H+2r, W+2r)
    padded_valid = F.pad(valid, (radius,) * 4)
    centre = xyz.permute(0, 3, 1, 2)[..., None]                            # (B, 3, H, W, 1)
    rows = []
    for dy in range(size):
        # (B, C, H, W + 2r) -> (B, C, H, W, K): every column offset of this row offset.
        others = padded[:, :, dy:dy + height].unfold(3, size, 1)
        step = others - centre
        rows.append(((step * step).sum(1) < eps ** 2)
                    & padded_valid[:, dy:dy + height].unfold(2, size, 1))
    return torch.stack(rows, 3) & valid[..., None, None]                  # (B, H, W, K, K)


def _touching(close: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """(B, H, W, K, K) close pairs, (B, H, W) kept -> (B, H, W) bool."""
    windows = F.pad(kept, (JOIN_RADIUS,) * 4).unfold(1, close.shape[3], 1).unfold(
        2, close.shape[4], 1)                                              # a view, no copy
    return (close & windows).flatten(3).any(3)


def near_cluster(xyz: torch.Tensor, valid: torch.Tensor, grid: torch.Tensor,
                 kept: torch.Tensor, stride: int, eps: float) -> torch.Tensor:
    """Full resolution (B, H, W, 3), (B, H, W); the grid (every stride-th pixel) (B, h, w, 3)
    and its kept pixels (B, h, w) -> (B, H, W) bool: valid pixels within eps of a kept grid
    point among the (2 NEAR_RADIUS + 1)^2 grid cells around their nearest grid pixel
    ((y + stride // 2) // stride, as `clustering._near_cluster`; cells off the grid are
    skipped).

    The torch version spreads the kept grid points to every pixel they are nearest to (the
    others moved far away), over the image extended by the window's reach, so the cell `dy`
    rows from a pixel's nearest one is the spread map's pixel `stride * dy` rows away: each
    row of the window is one dilated unfold."""
    far = torch.where(kept[..., None], grid, 1e6)                           # not kept: 1000 km
    kernels = _kernels(xyz.device)
    if kernels is not None:
        return kernels.near(xyz, valid, far, stride, eps, NEAR_RADIUS)
    height, width = valid.shape[1:]
    reach, size = NEAR_RADIUS * stride, 2 * NEAR_RADIUS + 1

    def cells(count, cells_count):  # (count + 2 reach,) grid index of each extended pixel
        index = (torch.arange(-reach, count + reach, device=xyz.device) + stride // 2) // stride
        return index.clamp(0, cells_count - 1), (index >= 0) & (index < cells_count)

    (rows, rows_on), (cols, cols_on) = cells(height, grid.shape[1]), cells(width, grid.shape[2])
    spread = torch.where((rows_on[:, None] & cols_on[None, :])[..., None],
                         far[:, rows[:, None], cols[None, :]], 1e6).permute(0, 3, 1, 2)
    centre = xyz.permute(0, 3, 1, 2)[:, :, None]                           # (B, 3, 1, H, W)
    near = torch.zeros_like(valid)
    for dy in range(size):
        shifted = spread[:, :, dy * stride:dy * stride + height]          # (B, 3, H, W + 2 reach)
        window = F.unfold(shifted, (1, size), dilation=(1, stride))
        step = window.view(len(xyz), 3, size, height, width) - centre
        near |= ((step * step).sum(1) < eps ** 2).any(1)
    return near & valid
