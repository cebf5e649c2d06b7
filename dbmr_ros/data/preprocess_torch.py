"""`preprocess` as torch operations on any device: the same background removal (support plane,
range, largest cluster on the organized grid), square padding and resize, for a Detector whose
network runs on a GPU, so a frame goes to the device once as raw arrays and never comes back
before its maps do.

It follows the numpy reference step for step (`preprocess`, `clustering`'s 'grid' method) and
agrees with it within the tolerance stated in `test/test_preprocess_torch.py`: the RANSAC
hypotheses are drawn by the same numpy generator on the CPU (a few kilobytes of indices moved to
the device), so the same plane is found; the connected components of the grid come from label
propagation with pointer jumping (a few dozen whole-grid passes instead of a graph library); the
nearest-point searches are chunked distance matrices instead of KD trees. The numpy version
stays the CPU path: on two cores it is faster.
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from dbmr_ros.cuda_graphs import GraphedFunction
from dbmr_ros.data.preprocess import PreprocessConfig, RANSAC_SEED, square_padding
from dbmr_ros.data.sample import valid_mask

# Grid neighbours linked directly: right, down and both diagonals (as `clustering`).
_GRID_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))
_CHUNK = 2048  # query rows per distance matrix (2048 x 50k floats: 400 MB at most)


def _plane_through(points: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(P, k, 3) -> unit normals (P, 3) and offsets (P,) of the least-squares planes."""
    centroid = points.mean(1)                                             # (P, 3)
    centred = points - centroid[:, None]
    covariance = centred.transpose(1, 2) @ centred                        # (P, 3, 3)
    normals = torch.linalg.eigh(covariance)[1][..., 0]   # eigenvector of the smallest eigenvalue
    return normals, -(normals * centroid).sum(-1)


def fit_plane_ransac(points: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(N, 3) float64 strip points -> plane (4,) as `preprocess.fit_plane_ransac` finds it: the
    same hypotheses (drawn by the same numpy generator on the CPU), each scored on the same
    subset, the best refitted on its inliers."""
    n = len(points)
    rng = np.random.default_rng(RANSAC_SEED)
    k = min(cfg.plane_ransac_points, n)
    hypotheses = torch.from_numpy(rng.integers(0, n, size=(cfg.plane_ransac_iterations, k)))
    normals, offsets = _plane_through(points[hypotheses.to(points.device)])
    scored = points
    if cfg.plane_max_points and n > cfg.plane_max_points:
        chosen = torch.from_numpy(rng.choice(n, cfg.plane_max_points, replace=False))
        scored = points[chosen.to(points.device)]
    distances = (normals.float() @ scored.float().T + offsets.float()[:, None]).abs()
    best = int((distances < cfg.plane_ransac_threshold).sum(1).argmax())
    inliers = (points @ normals[best] + offsets[best]).abs() < cfg.plane_ransac_threshold
    normal, offset = _plane_through(points[inliers][None])
    return torch.cat([normal[0], offset])


def _border_strip(xyz: torch.Tensor, width: int) -> torch.Tensor:
    """(M, 3) valid points within `width` pixels of the image border."""
    height, cols = xyz.shape[:2]
    if 2 * width >= min(height, cols):
        points = xyz.reshape(-1, 3)
    else:
        points = torch.cat([xyz[:width].reshape(-1, 3), xyz[-width:].reshape(-1, 3),
                            xyz[width:-width, :width].reshape(-1, 3),
                            xyz[width:-width, -width:].reshape(-1, 3)])
    return points[valid_mask(points)]


def support_plane_mask(xyz: torch.Tensor, valid: torch.Tensor,
                       cfg: PreprocessConfig) -> torch.Tensor:
    """(H, W) bool: valid points within `plane_clear_distance` of the border strip's plane."""
    strip = _border_strip(xyz, cfg.plane_border).double()
    if len(strip) < 3:
        return torch.zeros_like(valid)
    a, b, c, d = fit_plane_ransac(strip, cfg).float()
    distance = (xyz[..., 0] * a + xyz[..., 1] * b + xyz[..., 2] * c + d).abs()
    return valid & (distance < cfg.plane_clear_distance)


def grid_pairs(height: int, width: int):
    """Per grid offset: the two slices of an (H, W) grid it pairs."""
    for dy, dx in _GRID_OFFSETS:
        yield ((slice(0, height - dy), slice(max(0, -dx), width - max(0, dx))),
               (slice(dy, height), slice(max(0, dx), width + min(0, dx))))


def _links(xyz: torch.Tensor, valid: torch.Tensor, eps: float):
    """Per grid offset: bool mask of its pairs that are both valid and closer than eps."""
    for here, there in grid_pairs(*valid.shape):
        step = xyz[here] - xyz[there]
        yield valid[here] & valid[there] & ((step * step).sum(-1) < eps ** 2)


def _lowering_passes(labels: torch.Tensor, *links: torch.Tensor, passes: int) -> torch.Tensor:
    """`passes` rounds of: each label lowered to the smallest among its linked neighbours, then
    two jumps to its label's label. (H, W) long -> (H, W) long; nothing read back, so a CUDA
    graph replays all rounds as one launch."""
    height, width = labels.shape
    none = height * width
    for _ in range(passes):
        lowered = labels.clone()
        for (here, there), linked in zip(grid_pairs(height, width), links):
            pair = torch.where(linked, torch.minimum(labels[here], labels[there]), none)
            lowered[here] = torch.minimum(lowered[here], pair)
            lowered[there] = torch.minimum(lowered[there], pair)
        table = F.pad(lowered.flatten(), (0, 1), value=none)
        labels = table[table[lowered]]
    return labels


_lowering_graphs = GraphedFunction(_lowering_passes, 'grid label propagation')
_PASSES_PER_CHECK = 4  # rounds between convergence checks (a check reads a value back)


def grid_components(xyz: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """(H, W) long labels of the connected components of valid pixels linked to their 8 grid
    neighbours closer than eps; a component's label is its smallest flat pixel index, invalid
    pixels get H * W.

    Every round lowers each pixel's label to the smallest among its linked neighbours, then
    jumps each label to its label's label (a label always names a pixel of the same component,
    so this is safe), which makes the number of rounds grow with the log of a component's
    extent rather than with the extent (7 to 19 on cable_gland frames). Rounds past convergence
    change nothing, so convergence is checked every few rounds only.
    """
    height, width = valid.shape
    none = height * width
    labels = torch.arange(none, device=valid.device).view(height, width)
    labels = torch.where(valid, labels, none)
    links = tuple(_links(xyz, valid, eps))
    while True:
        # A copy: a replayed graph overwrites its output at the next replay.
        lowered = _lowering_graphs(labels, *links, passes=_PASSES_PER_CHECK).clone()
        if torch.equal(lowered, labels):
            return labels
        labels = lowered


def _any_within(queries: torch.Tensor, points: torch.Tensor, eps: float) -> torch.Tensor:
    """(Q,) bool: which query points (Q, 3) have a point (P, 3) closer than eps."""
    near = torch.zeros(len(queries), dtype=torch.bool, device=queries.device)
    if not len(points):
        return near
    for start in range(0, len(queries), _CHUNK):
        block = torch.cdist(queries[start:start + _CHUNK], points,
                            compute_mode='donot_use_mm_for_euclid_dist')
        near[start:start + _CHUNK] = (block < eps).any(1)
    return near


def largest_grid_cluster(xyz: torch.Tensor, valid: torch.Tensor, eps: float) -> torch.Tensor:
    """(H, W) bool: `clustering.largest_grid_cluster` in torch: the largest grid component,
    joined by every component that comes within eps of it, until none does."""
    if not valid.any():
        return valid
    labels = grid_components(xyz, valid, eps)
    counts = torch.bincount(labels[valid])
    keep = valid & (labels == counts.argmax())
    while True:
        others = valid & ~keep
        if not others.any():
            return keep
        joining = labels[others][_any_within(xyz[others], xyz[keep], eps)].unique()
        if not len(joining):
            return keep
        keep |= valid & torch.isin(labels, joining)


def _near_cluster(xyz: torch.Tensor, valid: torch.Tensor, clustered_grid: torch.Tensor,
                  stride: int, eps: float) -> torch.Tensor:
    """(H, W) bool: valid pixels within eps of a clustered grid point (`clustering._near_cluster`:
    the nearest grid pixel first, a search of the cluster for the rest)."""
    rows, cols = torch.nonzero(valid, as_tuple=True)
    grid_rows = torch.clamp((rows + stride // 2) // stride, max=clustered_grid.shape[0] - 1)
    grid_cols = torch.clamp((cols + stride // 2) // stride, max=clustered_grid.shape[1] - 1)
    offsets = xyz[rows, cols] - xyz[grid_rows * stride, grid_cols * stride]
    near = clustered_grid[grid_rows, grid_cols] & ((offsets * offsets).sum(-1) < eps ** 2)
    unsure = torch.nonzero(~near, as_tuple=True)[0]
    if len(unsure):
        cluster = xyz[::stride, ::stride][clustered_grid]
        near[unsure] = _any_within(xyz[rows[unsure], cols[unsure]], cluster, eps)
    keep = torch.zeros_like(valid)
    keep[rows, cols] = near
    return keep


def _max_stride(xyz: torch.Tensor, valid: torch.Tensor, eps: float) -> int:
    """`clustering._max_stride`: the grid stride whose point spacing stays under eps / 2."""
    rows, valid = xyz[::4], valid[::4]
    both = valid[:, 1:] & valid[:, :-1]
    if not both.any():
        return 1
    steps = rows[:, 1:][both] - rows[:, :-1][both]
    spacing = float(torch.quantile((steps * steps).sum(-1).double(), 0.5).sqrt())
    return max(1, int(eps / 2 / max(spacing, 1e-9)))


def largest_cluster_mask(xyz: torch.Tensor, valid: torch.Tensor, eps: float,
                         stride: int) -> torch.Tensor:
    """(H, W) bool: the grid method of `clustering.largest_cluster_mask` in torch."""
    stride = min(stride, _max_stride(xyz, valid, eps))
    clustered_grid = largest_grid_cluster(xyz[::stride, ::stride], valid[::stride, ::stride],
                                          eps)
    if stride == 1 or not clustered_grid.any():
        return clustered_grid
    return _near_cluster(xyz, valid, clustered_grid, stride, eps)


def clean_point_cloud(xyz: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """(H, W, 3) float tensor -> float32 with the background zeroed (plane, range, cluster), as
    `preprocess.clean_point_cloud`."""
    if cfg.keep_largest_cluster and cfg.cluster_method != 'grid':
        raise ValueError(f'the torch preprocessing has the grid clustering only, not '
                         f'{cfg.cluster_method!r}')
    keep = valid_mask(xyz)
    xyz = torch.where(keep[..., None], xyz.float(), 0.0)
    if cfg.max_depth > 0:
        keep &= xyz[..., 2] <= cfg.max_depth
    if cfg.remove_plane:
        keep &= ~support_plane_mask(xyz, keep, cfg)
    if cfg.keep_largest_cluster:
        keep = largest_cluster_mask(xyz, keep, cfg.dbscan_eps, cfg.dbscan_stride)
    return torch.where(keep[..., None], xyz, 0.0)


def _pad_square(image: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    if not cfg.pad_to_square:
        return image
    (top, bottom), (left, right) = square_padding(*image.shape[:2])
    return F.pad(image.permute(2, 0, 1), (left, right, top, bottom)).permute(1, 2, 0)


def preprocess(rgb: torch.Tensor, xyz: torch.Tensor,
               cfg: PreprocessConfig) -> Tuple[torch.Tensor, torch.Tensor]:
    """Raw (H, W, 3) uint8 rgb and float xyz tensors -> model-size (S, S, 3) uint8 and float32
    on their device: `preprocess.preprocess` (RGB bicubic, points nearest, as OpenCV does)."""
    size = (cfg.image_size, cfg.image_size)
    cleaned = clean_point_cloud(xyz, cfg)
    image = _pad_square(rgb, cfg).permute(2, 0, 1)[None].float()
    image = F.interpolate(image, size=size, mode='bicubic', align_corners=False)
    points = _pad_square(cleaned, cfg)
    rows, cols = (nearest_sources(n, cfg.image_size, points.device) for n in points.shape[:2])
    return (image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8),
            points[rows[:, None], cols[None, :]])


def nearest_sources(source: int, target: int, device) -> torch.Tensor:
    """(target,) source indices of OpenCV's INTER_NEAREST, floor(i * source / target) in
    double precision (torch's 'nearest' computes the scale in float32 and picks a different
    pixel where the product is an integer). Built on the device (no copy from the host, so a
    CUDA graph can record it); the same IEEE products as numpy's."""
    scale = 1.0 / (target / source)
    index = (torch.arange(target, dtype=torch.float64, device=device) * scale).floor()
    return index.long().clamp_max(source - 1)
