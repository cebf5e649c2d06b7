"""Local shape descriptors of an organized cloud: Fast Point Feature Histograms on the grid.

FPFH (Rusu et al., ICRA 2009) describes how the surface bends around a point: for each
neighbour, three angles between the two normals and the line joining the points (Open3D's
convention), each binned into 11 bins; a point's own histogram (SPFH) plus its neighbours'
histograms weighted by 1 / squared distance. It is what the classic MVTec 3D-AD baseline
(Back to the Feature) localises with, and its histograms see a smooth bump or dent of a
millimetre or two, which per-pixel normals lose in their noise.

On an organized cloud the neighbours of a pixel are the valid pixels of a square window around
it instead of a k-d tree's nearest points: the same points on a surface, and far cheaper. The
descriptor is computed on every `stride`-th pixel (BTF's 100 nearest points span about the
window used here at stride 2) and pooled into patches, as the baseline does. Its normals are
principal axes of 5 x 5 windows, not `grid.surface_normals`' central differences: the pair
angles need normals as smooth as the baseline's (30 nearest points), and the head's per-pixel
normals stay as they are.
"""
import math

import torch
import torch.nn.functional as F

from dbmr_ros.cuda_graphs import capturing
from dbmr_ros.symmetric3 import smallest_axis

BINS = 11
FPFH_DIM = 3 * BINS


def pca_normals(xyz: torch.Tensor, valid: torch.Tensor, radius: int = 2, stride: int = 1,
                centroid: torch.Tensor = None) -> torch.Tensor:
    """(B, H, W, 3) cloud (metres), (B, H, W) bool -> unit normals (B, H / stride, W / stride,
    3) of every `stride`-th pixel, facing the camera, zero where invalid: the smallest
    principal axis of the valid points in the (2 radius + 1)^2 window around it (BTF: of the
    30 nearest points; 25 here at radius 2).

    Second moments minus squared means cancel badly (a window spreads over a millimetre at
    0.4 m from the camera), so the moments are taken in float64 about `centroid` (B, 3), by
    default the valid points' mean. A caller that crops passes the uncropped cloud's centroid:
    the last bits of a mean depend on how many pixels it sums, and on exactly flat synthetic
    surfaces they decide pair-feature bins."""
    if centroid is None:
        centroid = _centroid(xyz, valid)
    weights = valid.double()[:, None]                                        # (B, 1, H, W)
    points = (xyz.double().permute(0, 3, 1, 2) - centroid[:, :, None, None]) * weights
    products = torch.stack([points[:, i] * points[:, j] for i, j in _PAIRS], 1)

    def window_sum(x):
        return F.avg_pool2d(x, 2 * radius + 1, stride=stride, padding=radius,
                            count_include_pad=True)

    count = window_sum(weights).clamp_min(1e-6)
    mean = window_sum(points) / count                                        # (B, 3, h, w)
    second = window_sum(products) / count                                    # (B, 6, h, w)
    cov = torch.stack([second[:, k] - mean[:, i] * mean[:, j]
                       for k, (i, j) in enumerate(_PAIRS)], -1)              # (B, h, w, 6)
    centres = xyz[:, ::stride, ::stride].double()
    normals = smallest_axis(cov, -centres).to(xyz.dtype)
    facing = (normals * centres.to(xyz.dtype)).sum(-1, keepdim=True) > 0
    normals = torch.where(facing, -normals, normals)
    return normals * valid[:, ::stride, ::stride, None]


def _centroid(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3), (B, H, W) -> (B, 3) float64 mean of the valid points."""
    weights = valid.double()[..., None]
    return (xyz.double() * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1)


_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2))


def _windows(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, K, H, W): each pixel's K = (2 radius + 1)^2 window, zero padded,
    its centre included at index K // 2 (cheaper to mask than to cut out). Strided views of
    the padded grid copied once (4 times faster than F.unfold's im2col, the same values)."""
    size = 2 * radius + 1
    batch, channels, height, width = x.shape
    views = F.pad(x, (radius,) * 4).unfold(2, size, 1).unfold(3, size, 1)  # (B, C, H, W, s, s)
    return views.permute(0, 1, 4, 5, 2, 3).reshape(batch, channels, size * size, height, width)


def _norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over dim 1 (linalg.vector_norm over a middle dim of a 5-D tensor is
    several times slower on the CPU)."""
    return (x * x).sum(1).sqrt()


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cross product over dim 1 (torch.cross over a middle dim of a 5-D tensor is several
    times slower on the CPU). Equal to torch.cross up to rounding (whether its kernel fuses a
    multiply-add); on a batch of real cable_gland parts every pair-feature bin came out the
    same."""
    a0, a1, a2 = a.unbind(1)
    b0, b1, b2 = b.unbind(1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], 1)


def _shifted(x: torch.Tensor, radius: int) -> list:
    """(..., H, W) -> the K = (2 radius + 1)^2 views of x zero padded, in `_windows`' order of
    window positions: view k at a pixel holds x at that pixel's k-th window position. Views of
    one padded copy, so the loops below shift without unfolding."""
    size = 2 * radius + 1
    height, width = x.shape[-2:]
    padded = F.pad(x, (radius,) * 4)
    return [padded[..., row:row + height, col:col + width]
            for row, col in (divmod(k, size) for k in range(size * size))]


def _window_sum(x: torch.Tensor, weights: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, C, H, W) values, (B, K, H, W) weights of each pixel's window (as `_windows` orders
    it) -> (B, C, H, W) weighted sums over the window, zero padded. One shifted product per
    offset instead of `_windows(x)`: for the 33 histogram bins that tensor, (B, 33, 25, H, W),
    was the descriptor's largest and slowest."""
    return sum(view * weights[:, None, k] for k, view in enumerate(_shifted(x, radius)))


def pair_bins(p1, n1, p2, n2):
    """Open3D's ComputePairFeatures of point pairs with normals, binned: (B, 3, ...) tensors
    (coordinates on dim 1, broadcastable) -> (B, 3, ...) long bin indices of the three angles,
    the second offset by 11 and the third by 22."""
    step = p2 - p1
    length = _norm(step)
    safe = torch.where(length > 0, length, torch.ones_like(length))
    cos1 = (n1 * step).sum(1) / safe
    cos2 = (n2 * step).sum(1) / safe
    swap = (cos1.abs() < cos2.abs())[:, None]   # start from the point whose angle is smaller
    source, target = torch.where(swap, n2, n1), torch.where(swap, n1, n2)
    step = torch.where(swap, -step, step)
    f3 = torch.where(swap[:, 0], -cos2, cos1)
    v = _cross(step, source)
    v_norm = _norm(v)
    v = v / torch.where(v_norm > 0, v_norm, torch.ones_like(v_norm))[:, None]
    w = _cross(source, v)
    f2 = (v * target).sum(1)
    f1 = torch.atan2((w * target).sum(1), (source * target).sum(1))
    degenerate = (length == 0) | (v_norm == 0)
    f1, f2, f3 = (torch.where(degenerate, torch.zeros_like(f), f) for f in (f1, f2, f3))
    bins = torch.stack([torch.floor(BINS * (f1 + math.pi) / (2 * math.pi)),
                        torch.floor(BINS * (f2 + 1.0) * 0.5),
                        torch.floor(BINS * (f3 + 1.0) * 0.5)], 1)
    # A kernel, not a host copy: the Detector's CUDA graph records this.
    offsets = (torch.arange(3, device=bins.device) * BINS).view(1, 3, *[1] * (bins.dim() - 2))
    return bins.clamp(0, BINS - 1).long() + offsets


def window_pair_bins(points: torch.Tensor, normals: torch.Tensor, near_points: torch.Tensor,
                     near_normals: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 3, H, W) points and normals, (B, 3, K, H, W) their windows (`_windows`) -> (B, 3, K,
    H, W) `pair_bins` of each pixel with each position of its window (the centre's: zero).

    Only the K // 2 positions after the centre are computed. The pair features do not depend
    on the order of the two points (Open3D starts from the point whose angle is smaller, so
    (p, q) and (q, p) give the same three angles, bit for bit where the two angles differ),
    so the bins at offset -o are those at offset +o read at the neighbour: half the work."""
    count = near_points.shape[2]
    half = count // 2
    after = pair_bins(points[:, :, None], normals[:, :, None], near_points[:, :, half + 1:],
                      near_normals[:, :, half + 1:])                       # (B, 3, K // 2, H, W)
    size = 2 * radius + 1
    height, width = points.shape[-2:]
    bins = after.new_zeros(*after.shape[:2], count, height, width)
    bins[:, :, half + 1:] = after
    for k in range(half):
        # Position k, at offset (dy, dx), is the opposite of position K - 1 - k, plane
        # K - 1 - k - (half + 1) of `after`, read at the neighbour: pixel (y + dy, x + dx).
        # Written in place (no padded copy, no concatenation); beyond the image the bins
        # stay zero, masked by the window's validity.
        dy, dx = k // size - radius, k % size - radius
        if abs(dy) >= height or abs(dx) >= width:
            continue   # wholly beyond the image
        bins[:, :, k, max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)] = (
            after[:, :, count - 1 - k - (half + 1), max(dy, 0):height - max(-dy, 0),
                  max(dx, 0):width - max(-dx, 0)])
    return bins


def fpfh(xyz: torch.Tensor, normals: torch.Tensor, valid: torch.Tensor,
         radius: int = 2, neighbours: int = 0) -> torch.Tensor:
    """(B, H, W, 3) cloud (metres) and unit normals, (B, H, W) bool -> (B, 33, H, W) FPFH over
    each pixel's (2 radius + 1)^2 window, zero where invalid; with `neighbours` > 0, over
    that many nearest points (in space) of the window only, as a k-d tree's k nearest: a
    ball, whatever the surface's tilt or a depth step inside the window."""
    mask = valid.to(xyz.dtype)[:, None]                                      # (B, 1, H, W)
    points, normals = xyz.permute(0, 3, 1, 2), normals.permute(0, 3, 1, 2)
    near = _windows(torch.cat([points, normals, mask], 1), radius)           # (B, 7, K, H, W)
    near_points, near_normals = near[:, :3], near[:, 3:6]
    near_valid = near[:, 6] * mask                                           # (B, K, H, W)
    near_valid[:, near_valid.shape[1] // 2] = 0                              # not itself
    squared = ((near_points - points[:, :, None]) ** 2).sum(1)              # (B, K, H, W)
    if 0 < neighbours < near_valid.shape[1] - 1:
        distance = squared.masked_fill(near_valid == 0, float('inf'))
        bound = distance.kthvalue(neighbours, dim=1, keepdim=True).values
        near_valid = near_valid * (distance <= bound)
    bins = window_pair_bins(points, normals, near_points, near_normals, radius)
    batch, _, _, height, width = bins.shape
    spfh = torch.zeros(batch, FPFH_DIM, height, width, dtype=xyz.dtype, device=xyz.device)
    spfh.scatter_add_(1, bins.flatten(1, 2), near_valid.repeat(1, 3, 1, 1))
    spfh = spfh * (100.0 / near_valid.sum(1, keepdim=True).clamp_min(1))
    weights = near_valid / torch.where(squared > 0, squared, torch.ones_like(squared))
    weighted = _window_sum(spfh, weights, radius).view(batch, 3, BINS, height, width)
    sums = weighted.sum(2, keepdim=True)
    weighted = weighted * (100.0 / torch.where(sums > 0, sums, torch.ones_like(sums)))
    weighted = weighted * (sums > 0)
    return (weighted.flatten(1, 2) + spfh) * mask


def patch_descriptors(xyz: torch.Tensor, valid: torch.Tensor, patch: int, stride: int = 2,
                      radius: int = 2, neighbours: int = 0) -> torch.Tensor:
    """(B, S, S, 3) cloud (metres) -> (B, 33, S / patch, S / patch): PCA normals and FPFH of
    every `stride`-th pixel (windows as above), 3 x 3 averaged, then averaged per patch of
    `patch` pixels (BTF's pooling: 3 x 3, then 28 x 28 patches at 224 px), background zero."""
    # The CPU's time follows the area computed, so there each sample gets its own box (the
    # union of a batch's rotated training samples is far larger); a GPU's follows the kernels
    # launched, so it takes the batch's. The same descriptors either way (tested).
    if xyz.device.type == 'cpu' and len(xyz) > 1:
        return torch.cat([descriptors_in_box(xyz[i:i + 1], valid[i:i + 1], patch, stride,
                                             radius, neighbours) for i in range(len(xyz))])
    return descriptors_in_box(xyz, valid, patch, stride, radius, neighbours)


def descriptors_in_box(xyz: torch.Tensor, valid: torch.Tensor, patch: int, stride: int = 2,
                       radius: int = 2, neighbours: int = 0) -> torch.Tensor:
    """`patch_descriptors` of a batch in one box: only the patches around the parts are
    computed (the background's descriptor is zero), a patch-aligned box around every valid
    pixel of the batch; the same descriptors as the whole image's, whatever else is in the
    batch (tested)."""
    batch, size = valid.shape[:2]
    out = torch.zeros(batch, FPFH_DIM, size // patch, size // patch, dtype=xyz.dtype,
                      device=xyz.device)
    if capturing():   # a recorded graph computes the whole image: no extent is read back
        rows = cols = (0, size // patch)
    else:
        rows, cols = (_patch_span(valid.any(dim), patch) for dim in (2, 1))
    if rows is None:
        return out
    box = (slice(None), slice(rows[0] * patch, rows[1] * patch),
           slice(cols[0] * patch, cols[1] * patch))
    centroid = _centroid(xyz, valid)   # of the whole image: the same for any batch
    xyz, valid = xyz[box], valid[box]
    normals = pca_normals(xyz, valid, stride=stride, centroid=centroid)
    every = (slice(None), slice(None, None, stride), slice(None, None, stride))
    features = fpfh(xyz[every], normals, valid[every], radius, neighbours)
    features = F.avg_pool2d(features, 3, stride=1, padding=1)   # zero padding = background
    out[:, :, rows[0]:rows[1], cols[0]:cols[1]] = F.avg_pool2d(features, patch // stride)
    return out


def _patch_span(occupied: torch.Tensor, patch: int):
    """(B, S) bool -> (first, end) patch indices holding every True of the batch and one patch
    more on each side (the 3 x 3 average carries a descriptor into its neighbour), or None.
    Reads the extent back (one synchronisation on a GPU)."""
    index = torch.nonzero(occupied.any(0))
    if len(index) == 0:
        return None
    return (max(int(index[0]) // patch - 1, 0),
            min(int(index[-1]) // patch + 2, occupied.shape[1] // patch))
