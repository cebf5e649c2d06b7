"""Operations on image-grid tensors (maps, masks and organized point clouds), batched.

Shared by the anomaly synthesizer, the scoring head's inputs and the maps, so that a normal or
a blur is computed one way everywhere.
"""
import functools

import torch
import torch.nn.functional as F

from dbmr_ros.cuda_graphs import capturing


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) separable Gaussian, truncated at 4 sigma, reflect padding (identity for
    sigma <= 0).

    Each pass is a product with a banded (size, size) matrix that holds the kernel and the
    reflection at both borders: a single-channel convolution of 33 taps (sigma 4) runs 5
    times slower on the CPU than the matrix product, which the maps' 224 px make cheap."""
    if sigma <= 0:
        return maps
    height, width = maps.shape[-2:]
    radius = min(int(4 * sigma + 0.5), min(height, width) - 1)
    along_h = _blur_matrix(height, radius, sigma, maps)
    along_w = along_h if width == height else _blur_matrix(width, radius, sigma, maps)
    return (maps.transpose(-1, -2) @ along_h).transpose(-1, -2) @ along_w


def _blur_matrix(size: int, radius: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """`_banded`'s matrix in `like`'s dtype and device, built once per kind (its small kernels
    cost about as much as the blur itself, 0.1 ms on the CPU); built afresh while a CUDA graph
    records, since a matrix first allocated there would live in the graph's private memory
    pool, not in a buffer the cache may keep."""
    if capturing():
        return _banded(size, radius, sigma, like.dtype, like.device)
    return _cached_banded(size, radius, sigma, like.dtype, like.device)


@functools.lru_cache(maxsize=16)
def _cached_banded(size: int, radius: int, sigma: float, dtype: torch.dtype,
                   device: torch.device) -> torch.Tensor:
    # A normal tensor even when first asked for under inference_mode: training multiplies
    # tensors that require grad with it.
    with torch.inference_mode(False):
        return _banded(size, radius, sigma, dtype, device)


def _banded(size: int, radius: int, sigma: float, dtype: torch.dtype,
            device: torch.device) -> torch.Tensor:
    """(size, size) matrix M with x @ M = the Gaussian of `radius` taps along x's last dim,
    reflect padded: M[i, j] is the weight of input i in output j. Built from kernels alone
    (no host copy) and summed in a fixed order: the direct tap, then the two reflected ones
    (both can reach one entry when radius > size / 2)."""
    taps = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    index = torch.arange(size, device=device)
    source, output = index[:, None], index[None]

    def taps_at(offset: torch.Tensor) -> torch.Tensor:
        """(size, size) offsets of a source from each output -> kernel weights, 0 outside."""
        inside = offset.abs() <= radius
        return torch.where(inside, kernel[(offset + radius).clamp(0, 2 * radius)], 0)

    # 'reflect' pads output j's window position j + o < 0 with input -(j + o), and beyond the
    # last input n with 2 n - (j + o): the reflected offsets of source i are -i - j and
    # 2 n - i - j, the border rows themselves (i = 0, i = n) not mirrored.
    last = size - 1
    return (taps_at(source - output)
            + torch.where(source > 0, taps_at(-source - output), 0)
            + torch.where(source < last, taps_at(2 * last - source - output), 0))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool -> bool, grown by `radius` pixels (square structuring element)."""
    if radius <= 0:
        return mask
    # A square is a row times a column, and a pixel is set where its window along each counts
    # any set pixel: a difference of two cumulative sums, exact in integers. Ten times cheaper
    # than max pooling on the CPU (2.3 -> 0.24 ms per frame at radius 8 and 224 px on 2 cores).
    counts = mask.to(torch.int32)
    for dim in (1, 2):
        size = counts.shape[dim]
        before_after = (radius + 1, radius)
        cumulative = F.pad(counts, (0, 0) + before_after if dim == 1 else before_after).cumsum(dim)
        counts = (cumulative.narrow(dim, 2 * radius + 1, size)
                  - cumulative.narrow(dim, 0, size))
    return counts > 0


def surface_normals(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unit normals (B, H, W, 3) of an organized cloud (B, H, W, 3), facing the camera.

    Central differences where both neighbours are valid, one-sided where only one is; pixels
    without a usable pair in both directions, and invalid ones, get the reversed viewing ray
    (-p / |p|), which is what a camera sees of an unknown surface.
    """
    def difference(dim: int):
        # Neighbour pairs along `dim` (1: rows, 2: columns); roll wraps around, so the first
        # and last lines have no neighbour on their outer side.
        ahead_ok = torch.roll(valid, -1, dims=dim) & ~_edge(valid, dim, first=False)
        behind_ok = torch.roll(valid, 1, dims=dim) & ~_edge(valid, dim, first=True)
        forward = torch.where(ahead_ok[..., None], torch.roll(xyz, -1, dims=dim), xyz)
        backward = torch.where(behind_ok[..., None], torch.roll(xyz, 1, dims=dim), xyz)
        return forward - backward, (ahead_ok | behind_ok) & valid

    d_rows, ok_rows = difference(1)
    d_cols, ok_cols = difference(2)
    normals = torch.cross(d_cols, d_rows, dim=-1)
    length = normals.norm(dim=-1, keepdim=True)
    ray = -xyz / xyz.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    usable = ok_rows & ok_cols & (length[..., 0] > 1e-12)
    normals = torch.where(usable[..., None], normals / length.clamp_min(1e-12), ray)
    # Face the camera (the optical frame's origin).
    facing = (normals * xyz).sum(-1, keepdim=True) > 0
    return torch.where(facing, -normals, normals)


def _edge(template: torch.Tensor, dim: int, first: bool) -> torch.Tensor:
    """Bool mask of the first (or last) row/column along `dim` (1 or 2)."""
    edge = torch.zeros_like(template)
    if dim == 1:
        edge[:, 0 if first else -1] = True
    else:
        edge[:, :, 0 if first else -1] = True
    return edge
