"""The two window searches of `preprocess_batched` as Triton kernels, one launch each.

In torch both are memory-bound: every pixel's window is materialised (the joins' close pairs,
17 x 17 per grid cell; the near step's 7 x 7 candidates per pixel, one dilated unfold per row),
written and read back several times, which made them 24 of the 30 ms a batch of 32 frames
takes on an H100 (`benchmarks/bench_preprocess.py`). Here each program takes a block of
pixels and walks the window in registers, reading the points once from the cache.

The results equal the torch versions' (tested in Triton's interpreter on real frames): the
squared distance is summed in the same order without fused multiply-adds
(`enable_fp_fusion=False`). CUDA only; `preprocess_batched` keeps the torch versions elsewhere.
Triton compiles them at their first call (a CUDA graph's warm-up run).
"""
from typing import Callable

import torch
import triton
import triton.language as tl

BLOCK = 256  # pixels per program
_OPTIONS = {'BLOCK': BLOCK, 'num_warps': 4, 'enable_fp_fusion': False}


@triton.jit
def _point(xyz, index, mask, other):
    """The (x, y, z) of points `index` of a (..., 3) array, `other` where masked."""
    return (tl.load(xyz + index * 3, mask=mask, other=other),
            tl.load(xyz + index * 3 + 1, mask=mask, other=other),
            tl.load(xyz + index * 3 + 2, mask=mask, other=other))


@triton.jit
def _closer(dx, dy, dz, eps2):
    """Squared length below eps2, summed in the torch versions' order."""
    return (dx * dx + dy * dy) + dz * dz < eps2


@triton.jit
def _touching_kernel(xyz, valid, kept, out, pixels, height, width, eps2,
                     RADIUS: tl.constexpr, BLOCK: tl.constexpr):
    """out[p] = valid[p] and some kept pixel of p's (2 RADIUS + 1)^2 window is closer than
    sqrt(eps2); (B, H, W) grids flattened, xyz (B, H, W, 3)."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = index < pixels
    frame_start = index - index % (height * width)
    y = index % (height * width) // width
    x = index % width
    cx, cy, cz = _point(xyz, index, inside, 0.0)
    found = tl.zeros([BLOCK], dtype=tl.int1)
    for dy in range(-RADIUS, RADIUS + 1):
        row = y + dy
        row_inside = inside & (row >= 0) & (row < height)
        for dx in range(-RADIUS, RADIUS + 1):
            col = x + dx
            ok = row_inside & (col >= 0) & (col < width)
            other = frame_start + row * width + col
            is_kept = tl.load(kept + other, mask=ok, other=0) != 0
            ox, oy, oz = _point(xyz, other, ok, 0.0)
            found = found | (ok & is_kept & _closer(ox - cx, oy - cy, oz - cz, eps2))
    centre_valid = tl.load(valid + index, mask=inside, other=0) != 0
    tl.store(out + index, (found & centre_valid).to(tl.int8), mask=inside)


@triton.jit
def _near_kernel(xyz, valid, grid, out, pixels, height, width, grid_height, grid_width,
                 stride, eps2, RADIUS: tl.constexpr, BLOCK: tl.constexpr):
    """out[p] = valid[p] and some point of `grid` (B, h, w, 3; the kept grid points, the
    others far away) in the (2 RADIUS + 1)^2 grid cells around p's nearest one is closer than
    sqrt(eps2); full-resolution xyz (B, H, W, 3)."""
    index = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = index < pixels
    frame = index // (height * width)
    y = index % (height * width) // width
    x = index % width
    cx, cy, cz = _point(xyz, index, inside, 0.0)
    nearest_row = (y + stride // 2) // stride
    nearest_col = (x + stride // 2) // stride
    found = tl.zeros([BLOCK], dtype=tl.int1)
    for dy in range(-RADIUS, RADIUS + 1):
        row = nearest_row + dy
        row_inside = inside & (row >= 0) & (row < grid_height)
        for dx in range(-RADIUS, RADIUS + 1):
            col = nearest_col + dx
            ok = row_inside & (col >= 0) & (col < grid_width)
            cell = (frame * grid_height + row) * grid_width + col
            ox, oy, oz = _point(grid, cell, ok, 1e6)
            found = found | (ok & _closer(ox - cx, oy - cy, oz - cz, eps2))
    centre_valid = tl.load(valid + index, mask=inside, other=0) != 0
    tl.store(out + index, (found & centre_valid).to(tl.int8), mask=inside)


def touching_search(xyz: torch.Tensor, valid: torch.Tensor, eps: float,
                    radius: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """(B, H, W, 3), (B, H, W) bool -> a function of kept (B, H, W) bool giving (B, H, W)
    bool: `window_search.touching_search`. The grid is laid out for the kernel once, not once
    per joining wave."""
    points, valid_bytes = xyz.float().contiguous(), valid.to(torch.int8)
    pixels = valid.numel()

    def touching(kept: torch.Tensor) -> torch.Tensor:
        out = torch.empty(valid.shape, dtype=torch.int8, device=valid.device)
        _touching_kernel[(triton.cdiv(pixels, BLOCK),)](
            points, valid_bytes, kept.to(torch.int8), out, pixels, valid.shape[1],
            valid.shape[2], eps ** 2, RADIUS=radius, **_OPTIONS)
        return out.bool()
    return touching


def near(xyz: torch.Tensor, valid: torch.Tensor, far_grid: torch.Tensor, stride: int,
         eps: float, radius: int) -> torch.Tensor:
    """(B, H, W, 3), (B, H, W) bool, (B, h, w, 3) kept grid points (others far away) ->
    (B, H, W) bool: `window_search.near_cluster`."""
    out = torch.empty(valid.shape, dtype=torch.int8, device=valid.device)
    pixels = valid.numel()
    _near_kernel[(triton.cdiv(pixels, BLOCK),)](
        xyz.float().contiguous(), valid.to(torch.int8), far_grid.float().contiguous(), out,
        pixels, valid.shape[1], valid.shape[2], far_grid.shape[1], far_grid.shape[2], stride,
        eps ** 2, RADIUS=radius, **_OPTIONS)
    return out.bool()
