"""`preprocess` for a batch of same-size frames in fixed shapes, for a CUDA graph to replay.

The numpy reference (`preprocess`) reads values as it goes (point counts, the best RANSAC
hypothesis, convergence of the components, which components join). Here nothing depends on the
values: every tensor's shape follows from (batch, height, width) and the config alone, so one
CUDA graph per batch shape records the whole step and a replay launches it at once. What
changes to get there, and what it costs in agreement:

- The plane: as many RANSAC hypotheses of as many points, drawn as fixed seeded uniform numbers
  mapped onto each frame's valid border points (the reference draws indices with numpy for the
  count at hand), scored on a fixed draw of `plane_max_points` of them, the best refitted on its
  inliers; least-squares planes by `symmetric3.smallest_axis` instead of eigh.
- The largest cluster, at the configured stride: grid components by hooking and pointer jumping
  for a fixed number of rounds; components that come within eps of the kept one join when that
  happens inside a window of grid cells (`window_search.JOIN_RADIUS`; the reference searches
  the whole cloud, once per joining wave); the other pixels are kept when within eps of a kept
  grid point among the window around their nearest grid pixel (`window_search.NEAR_RADIUS`;
  the reference: anywhere). Triton kernels run both searches on CUDA.

Each frame comes with an `exact` flag, False where one of these bounds may have cut the
reference short: the components had not converged by the last round, one more joining wave
would still add a component, or the point spacing asks for a finer stride than the configured
one (`clustering._max_stride`). The Detector redoes such frames with the numpy reference. The
agreement with the numpy reference is stated and tested in `test/test_preprocess_batched.py`.
"""
import functools
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from dbmr_ros.data import window_search
from dbmr_ros.data.clustering import grid_pairs
from dbmr_ros.data.preprocess import PreprocessConfig, RANSAC_SEED, square_padding
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.symmetric3 import smallest_axis

COMPONENT_ROUNDS = 8   # hooking + jumping rounds (cable_gland: 5 or 6, the last changing nothing)
JOIN_WAVES = 4         # components joining the kept one, then theirs, ... (cable_gland: 0-4)


def preprocess_batch(rgb: torch.Tensor, xyz: torch.Tensor, cfg: PreprocessConfig
                     ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw (B, H, W, 3) uint8 rgb and float xyz (invalid: NaN or zero) on any device ->
    model-size (B, S, S, 3) uint8 and float32, and (B,) bool `exact` (see the module's doc)."""
    if cfg.keep_largest_cluster and cfg.cluster_method != 'grid':
        raise ValueError(f'the batched preprocessing has the grid clustering only, not '
                         f'{cfg.cluster_method!r}')
    cleaned, exact = clean_point_clouds(xyz, cfg)
    return _resize_rgb(rgb, cfg), _resize_points(cleaned, cfg), exact


def clean_point_clouds(xyz: torch.Tensor, cfg: PreprocessConfig
                       ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 3) -> float32 with the background zeroed (plane, range, cluster), and (B,) bool
    `exact`."""
    keep = valid_mask(xyz)
    xyz = torch.where(keep[..., None], xyz.float(), 0.0)
    exact = torch.ones(len(xyz), dtype=torch.bool, device=xyz.device)
    if cfg.max_depth > 0:
        keep &= xyz[..., 2] <= cfg.max_depth
    if cfg.remove_plane:
        keep &= ~support_plane_masks(xyz, keep, cfg)
    if cfg.keep_largest_cluster:
        keep, exact = largest_cluster_masks(xyz, keep, cfg.dbscan_eps, cfg.dbscan_stride)
    return torch.where(keep[..., None], xyz, 0.0), exact


# --- the support plane ---------------------------------------------------------------------

def support_plane_masks(xyz: torch.Tensor, valid: torch.Tensor,
                        cfg: PreprocessConfig) -> torch.Tensor:
    """(B, H, W) bool: valid points within `plane_clear_distance` of the plane fitted on each
    frame's border strip (none where fewer than 3 border points are valid)."""
    batch, height, width = valid.shape
    strip = _strip_pixels(height, width, cfg.plane_border, xyz.device)
    points = xyz.reshape(batch, -1, 3)[:, strip].double()                   # (B, M, 3)
    usable = valid.reshape(batch, -1)[:, strip]                            # (B, M)
    hypotheses_u, scored_u = _uniforms(cfg, len(strip), xyz.device)
    count = usable.sum(1)                                                  # (B,)
    # Hypotheses: (B, I, k) points each; their planes scored on a fixed draw of strip points.
    chosen = _nth_valid(usable, hypotheses_u)
    normals, offsets = _planes(_gather(points, chosen))
    scored = _gather(points, _nth_valid(usable, scored_u)).float()         # (B, S, 3)
    distances = (normals.float() @ scored.transpose(1, 2) + offsets.float()[..., None]).abs()
    best = (distances < cfg.plane_ransac_threshold).sum(2).argmax(1)       # (B,) first of equals
    normal = normals[torch.arange(batch, device=xyz.device), best]          # (B, 3)
    offset = offsets[torch.arange(batch, device=xyz.device), best]
    inliers = usable & ((points @ normal[..., None])[..., 0] + offset[:, None]).abs().lt(
        cfg.plane_ransac_threshold)
    normal, offset = _planes(points[:, None], inliers[:, None])
    plane = torch.cat([normal[:, 0], offset], 1).float()                  # (B, 4)
    a, b, c, d = (p[:, None, None] for p in plane.unbind(1))
    distance = xyz[..., 0] * a + xyz[..., 1] * b + xyz[..., 2] * c + d  # the reference's order
    return valid & (distance.abs() < cfg.plane_clear_distance) & (count >= 3)[:, None, None]


@functools.lru_cache(maxsize=8)
def _strip_pixels(height: int, width: int, border: int, device) -> torch.Tensor:
    """(M,) flat indices of the pixels within `border` of the image's edge, in the order of
    `preprocess.border_strip` (top rows, bottom rows, left then right columns between)."""
    index = np.arange(height * width).reshape(height, width)
    if 2 * border >= min(height, width):
        return torch.from_numpy(index.ravel()).to(device)
    parts = (index[:border], index[-border:], index[border:-border, :border],
             index[border:-border, -border:])
    return torch.from_numpy(np.concatenate([p.ravel() for p in parts])).to(device)


@functools.lru_cache(maxsize=8)
def _uniforms(cfg: PreprocessConfig, strip_size: int, device):
    """Fixed seeded draws in [0, 1): (I, k) for the hypotheses' points, (S,) for the points
    they are scored on (S = plane_max_points, or the whole strip when that is 0)."""
    rng = np.random.default_rng(RANSAC_SEED)
    hypotheses = rng.random((cfg.plane_ransac_iterations, cfg.plane_ransac_points))
    scored = rng.random(cfg.plane_max_points or strip_size)
    return torch.from_numpy(hypotheses).to(device), torch.from_numpy(scored).to(device)


def _nth_valid(valid: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """(B, M) bool, fractions (...) in [0, 1) -> (B, ...) positions in M of each frame's
    floor(fraction * count)-th valid entry (position 0 when a frame has none)."""
    ranks = valid.long().cumsum(1)                                         # (B, M)
    count = ranks[:, -1:]
    wanted = (fraction.reshape(1, -1) * count).floor().long() + 1          # (B, F)
    positions = torch.searchsorted(ranks, torch.minimum(wanted, count.clamp_min(1)))
    return positions.clamp_max(valid.shape[1] - 1).view(len(valid), *fraction.shape)


def _gather(points: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, M, 3), (B, ...) -> (B, ..., 3)."""
    flat = positions.reshape(len(points), -1)
    taken = torch.gather(points, 1, flat[..., None].expand(-1, -1, 3))
    return taken.view(*positions.shape, 3)


def _planes(points: torch.Tensor, weights: torch.Tensor = None
            ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, P, k, 3) float64 points (weights (B, P, k) bool: which count) -> unit normals
    (B, P, 3) and offsets (B, P) of their least-squares planes."""
    w = torch.ones_like(points[..., 0]) if weights is None else weights.double()
    total = w.sum(-1, keepdim=True).clamp_min(1)                           # (B, P, 1)
    centroid = (points * w[..., None]).sum(-2) / total                     # (B, P, 3)
    centred = (points - centroid[..., None, :]) * w[..., None].sqrt()
    x, y, z = centred.unbind(-1)
    cov = torch.stack([(x * x).sum(-1), (x * y).sum(-1), (x * z).sum(-1), (y * y).sum(-1),
                       (y * z).sum(-1), (z * z).sum(-1)], -1)              # (B, P, 6)
    # The power iteration starts from the viewing axis: no support plane's normal is orthogonal
    # to it in practice (a camera looks at its support plane, not along it).
    start = torch.zeros_like(cov[..., :3])
    start[..., 2] = 1.0
    normals = smallest_axis(cov / total, start)
    return normals, -(normals * centroid).sum(-1)


# --- the largest cluster -------------------------------------------------------------------

def largest_cluster_masks(xyz: torch.Tensor, valid: torch.Tensor, eps: float, stride: int
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 3), (B, H, W) -> (B, H, W) bool, the largest cluster of each frame (the grid
    method of `clustering.largest_cluster_mask`, within the module's bounds), and (B,) exact."""
    grid, grid_valid = xyz[:, ::stride, ::stride], valid[:, ::stride, ::stride]
    labels, converged = grid_components(grid, grid_valid, eps)
    kept = _largest(labels, grid_valid)
    touching = window_search.touching_search(grid, grid_valid, eps)
    for _ in range(JOIN_WAVES):
        kept = kept | _joining(labels, grid_valid, touching(kept))
    still_joining = (~kept & touching(kept)).flatten(1)
    exact = converged & ~still_joining.any(1) & _stride_fits(xyz, valid, eps, stride)
    if stride == 1:
        return kept, exact
    return window_search.near_cluster(xyz, valid, grid, kept, stride, eps), exact


def grid_components(xyz: torch.Tensor, valid: torch.Tensor, eps: float
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 3), (B, H, W) -> (B, H, W) long component labels of the valid pixels linked to
    their 8 neighbours closer than eps (one label per component, unique across the batch;
    invalid pixels B * H * W), and (B,) bool: converged within COMPONENT_ROUNDS.

    Each round hooks the label of both ends of every link to the smaller of the two (a scatter
    of minima) and jumps every label twice to its label's label; a label always names a pixel
    of its component, so both steps are safe, and the rounds grow with the log of a
    component's extent."""
    batch, height, width = valid.shape
    none = batch * height * width
    index = torch.arange(none, device=valid.device).view(batch, height, width)
    here, there, linked = [], [], []
    for here_2d, there_2d in grid_pairs(height, width):
        a, b = (slice(None),) + here_2d, (slice(None),) + there_2d  # every frame of the batch
        step = xyz[a] - xyz[b]
        here.append(index[a].flatten())
        there.append(index[b].flatten())
        linked.append((valid[a] & valid[b] & ((step * step).sum(-1) < eps ** 2)).flatten())
    here, there, linked = torch.cat(here), torch.cat(there), torch.cat(linked)
    # Every link whose ends already agree writes to a slot of its own past the labels: the
    # scatter is atomic, and thousands of writes to one root label would queue on it.
    spare = none + 1 + torch.arange(len(here), device=valid.device)
    labels = torch.cat([torch.where(valid.flatten(), index.flatten(), none),
                        spare.new_full((1,), none), spare])
    for _ in range(COMPONENT_ROUNDS):
        previous = labels
        ends = labels[here], labels[there]
        low = torch.minimum(*ends)
        for end in ends:
            lowers = linked & (low < end)
            labels = labels.scatter_reduce(0, torch.where(lowers, end, spare),
                                           torch.where(lowers, low, spare), 'amin')
        labels = labels[labels[labels]]
    changed = (labels != previous)[:none].view(batch, -1).any(1)
    return labels[:none].view(batch, height, width), ~changed


def _largest(labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels -> (B, H, W) bool: each frame's largest component (the first label of
    equals, as bincount's argmax)."""
    batch = len(labels)
    counts = torch.zeros(labels.numel() + 1, dtype=torch.long, device=labels.device)
    counts.scatter_add_(0, labels.flatten(), torch.ones_like(labels.flatten()))
    best = counts[:-1].view(batch, -1).argmax(1) + torch.arange(
        batch, device=labels.device) * labels[0].numel()
    return valid & (labels == best[:, None, None])


def _joining(labels: torch.Tensor, valid: torch.Tensor, touching: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the valid pixels of every component that has a touching pixel."""
    none = labels.numel()
    marks = torch.zeros(none + 1, dtype=torch.bool, device=labels.device)
    # Untouched pixels mark the label `none`, which only invalid pixels carry.
    marks = marks.index_fill(0, torch.where(touching, labels, none).flatten(), True)
    return valid & marks[labels]


def _stride_fits(xyz: torch.Tensor, valid: torch.Tensor, eps: float,
                 stride: int) -> torch.Tensor:
    """(B,) bool: `clustering._max_stride` would allow `stride` (the median spacing of
    horizontally adjacent valid points on every 4th row is at most eps / (2 stride))."""
    if stride == 1:
        return torch.ones(len(xyz), dtype=torch.bool, device=xyz.device)
    rows, valid = xyz[:, ::4], valid[:, ::4]
    both = (valid[:, :, 1:] & valid[:, :, :-1]).flatten(1)
    step = (rows[:, :, 1:] - rows[:, :, :-1]).flatten(1, 2)
    fine = ((step * step).sum(-1) <= (eps / 2 / stride) ** 2) & both
    # The median is within the bound when at least half of the spacings are.
    # (Without a single pair the reference falls back to stride 1.)
    return (2 * fine.sum(1) >= both.sum(1)) & both.any(1)


# --- padding and resizing ------------------------------------------------------------------

def _pad_square(images: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, C) -> (B, C, side, side) zero padded as `preprocess.pad_square`."""
    channels_first = images.permute(0, 3, 1, 2)
    if not cfg.pad_to_square:
        return channels_first
    (top, bottom), (left, right) = square_padding(*images.shape[1:3])
    return F.pad(channels_first, (left, right, top, bottom))


def _resize_rgb(rgb: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, S, S, 3) uint8, bicubic as OpenCV (within 1 grey level)."""
    image = F.interpolate(_pad_square(rgb, cfg).float(), size=(cfg.image_size,) * 2,
                          mode='bicubic', align_corners=False)
    return image.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8)


def _resize_points(xyz: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, 3) -> (B, S, S, 3), nearest as OpenCV (never blends across depth edges)."""
    padded = _pad_square(xyz, cfg).permute(0, 2, 3, 1)
    rows, cols = (nearest_sources(n, cfg.image_size, xyz.device) for n in padded.shape[1:3])
    return padded[:, rows[:, None], cols[None, :]]


def nearest_sources(source: int, target: int, device) -> torch.Tensor:
    """(target,) source indices of OpenCV's INTER_NEAREST, floor(i * source / target) in
    double precision (torch's 'nearest' computes the scale in float32 and picks a different
    pixel where the product is an integer). Built on the device (no copy from the host, so a
    CUDA graph can record it); the same IEEE products as numpy's."""
    scale = 1.0 / (target / source)
    index = (torch.arange(target, dtype=torch.float64, device=device) * scale).floor()
    return index.long().clamp_max(source - 1)
