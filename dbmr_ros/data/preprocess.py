"""Point cloud and image preprocessing as the field does it (BTF / M3DM / CFM), plus resizing.

The order follows the reference scripts: remove the support plane (RANSAC on the border strip),
pad to a square whose side is rounded up to the next 100, keep the largest DBSCAN cluster, then
resize to the model's input size. Unlike the reference scripts nothing is written back into the
dataset: `PreprocessCache` stores results in a cache directory of its own.
"""
import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np
from scipy.spatial import cKDTree
from sklearn.cluster import DBSCAN
from threadpoolctl import ThreadpoolController

from dbmr_ros.data.sample import invalid_to_zero, valid_mask
from dbmr_ros.dataclass_dict import from_dict, to_dict
from dbmr_ros.files import atomic_write


@dataclass(frozen=True)
class PreprocessConfig:
    """Everything that turns a raw (rgb, xyz) pair into model input. Saved in checkpoints."""

    image_size: int = 224
    remove_plane: bool = True
    plane_border: int = 10            # pixels of the border strip the plane is fitted on
    plane_ransac_threshold: float = 0.004  # m, inlier distance while fitting
    plane_ransac_points: int = 50     # points per RANSAC hypothesis (least-squares fit)
    plane_ransac_iterations: int = 1000
    plane_clear_distance: float = 0.005  # m, points this close to the plane are removed
    pad_to_square: bool = True
    keep_largest_cluster: bool = True
    dbscan_eps: float = 0.006         # m
    dbscan_min_points: int = 30
    # DBSCAN runs on every n-th pixel of the organized grid (min_points scaled by 1 / n^2) and the
    # remaining points join the kept cluster when within eps of it: ~30x faster at n = 3 and the
    # same object mask to within 0.3 % of its points on cable_gland. 1 = the exact reference.
    dbscan_stride: int = 3
    plane_max_points: int = 4000      # strip points the RANSAC hypotheses are scored on
    max_depth: float = 0.0            # m; > 0 drops points farther than this (working volume)
    seed: int = 0                     # RANSAC sampling, so results are reproducible

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'PreprocessConfig':
        return from_dict(cls, values, 'preprocessing')


def fit_plane_ransac(points: np.ndarray, threshold: float, points_per_hypothesis: int,
                     iterations: int, rng: np.random.Generator,
                     max_points: int = 0) -> np.ndarray:
    """Plane (a, b, c, d) with unit normal, a*x + b*y + c*z + d = 0, by RANSAC.

    points: (N, 3). Each hypothesis is the least-squares plane of `points_per_hypothesis` random
    points (as Open3D's segment_plane with ransac_n > 3); the best one by inlier count is refitted
    on its inliers. Hypotheses are scored vectorised, 64 at a time.
    """
    n = len(points)
    if n < 3:
        raise ValueError(f'plane fit needs at least 3 points, got {n}')
    k = min(points_per_hypothesis, n)
    samples = points[rng.integers(0, n, size=(iterations, k))]           # (I, k, 3)
    normals, offsets = _least_squares_planes(samples)                     # (I, 3), (I,)
    scored = points if not max_points or n <= max_points else points[
        rng.choice(n, max_points, replace=False)]
    # Inlier counting in float32 (millimetre thresholds at metre ranges lose nothing), in
    # cache-sized chunks of hypotheses, each row of distances contiguous (3x faster than
    # (points, hypotheses) blocks).
    scored_t = np.ascontiguousarray(scored.T, dtype=np.float32)          # (3, M)
    normals32, offsets32 = normals.astype(np.float32), offsets.astype(np.float32)
    counts = np.empty(iterations, dtype=np.int64)
    for start in range(0, iterations, 64):
        distances = normals32[start:start + 64] @ scored_t                # (64, M)
        distances += offsets32[start:start + 64, None]
        np.abs(distances, out=distances)
        counts[start:start + 64] = np.count_nonzero(distances < threshold, axis=1)
    best = int(np.argmax(counts))
    inliers = np.abs(points @ normals[best] + offsets[best]) < threshold
    normal, offset = _least_squares_planes(points[inliers][None])
    return np.concatenate([normal[0], offset]).astype(np.float64)


def _least_squares_planes(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """points: (P, k, 3) -> unit normals (P, 3) and offsets (P,) of the best-fit planes."""
    centroid = points.mean(axis=1, keepdims=True)
    centred = points - centroid
    covariance = centred.transpose(0, 2, 1) @ centred                      # (P, 3, 3)
    normals = np.linalg.eigh(covariance)[1][:, :, 0]  # eigenvector of the smallest eigenvalue
    offsets = -np.einsum('pc,pc->p', normals, centroid[:, 0, :])
    return normals, offsets


def border_strip(xyz: np.ndarray, width: int) -> np.ndarray:
    """(M, 3) valid points within `width` pixels of the image border."""
    height, cols = xyz.shape[:2]
    if 2 * width >= min(height, cols):
        points = xyz.reshape(-1, 3)
    else:  # four slices: each pixel once, the interior never touched
        points = np.concatenate([xyz[:width].reshape(-1, 3), xyz[-width:].reshape(-1, 3),
                                 xyz[width:-width, :width].reshape(-1, 3),
                                 xyz[width:-width, -width:].reshape(-1, 3)])
    return points[valid_mask(points)]


def remove_support_plane(xyz: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Copy of xyz with the support plane (fitted on the border strip) zeroed."""
    edge_points = border_strip(xyz, cfg.plane_border).astype(np.float64)
    out = xyz.copy()
    if len(edge_points) < 3:
        return out  # nothing visible on the border: no plane to remove
    plane = fit_plane_ransac(edge_points, cfg.plane_ransac_threshold, cfg.plane_ransac_points,
                             cfg.plane_ransac_iterations, np.random.default_rng(cfg.seed),
                             cfg.plane_max_points)
    valid = valid_mask(xyz)
    near = np.zeros_like(valid)
    near[valid] = np.abs(xyz[valid].astype(np.float64) @ plane[:3] + plane[3]) < \
        cfg.plane_clear_distance
    out[near] = 0.0
    return out


def square_padding(height: int, width: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((top, bottom), (left, right)) padding to a square with side rounded up to the next 100."""
    side = max(int(math.ceil(height / 100.0)) * 100, int(math.ceil(width / 100.0)) * 100)
    top, left = (side - height) // 2, (side - width) // 2
    return (top, side - height - top), (left, side - width - left)


def keep_largest_cluster(xyz: np.ndarray, eps: float, min_points: int,
                         stride: int = 1) -> np.ndarray:
    """Copy of xyz keeping only the largest DBSCAN cluster of the valid points.

    stride > 1 clusters every stride-th pixel in both directions (min_points / stride^2) and
    keeps every valid point within eps of that cluster.
    """
    valid = valid_mask(xyz)
    out = np.zeros_like(xyz)
    stride = min(stride, _max_stride(xyz, valid, eps))
    grid_valid = valid[::stride, ::stride]
    points = xyz[::stride, ::stride][grid_valid]
    min_samples = max(1, int(round(min_points / stride ** 2)))
    if len(points) < min_samples:
        return out
    # Ball tree: the same neighbourhoods as the default KD tree, 1.7x faster on these clouds.
    labels = DBSCAN(eps=eps, min_samples=min_samples, algorithm='ball_tree').fit_predict(points)
    clustered = labels >= 0
    if not clustered.any():
        return out
    clustered_grid = np.zeros_like(grid_valid)
    clustered_grid[grid_valid] = labels == np.argmax(np.bincount(labels[clustered]))
    keep = clustered_grid if stride == 1 else _near_cluster(xyz, valid, clustered_grid, stride,
                                                            eps)
    out[keep] = xyz[keep]
    return out


def _near_cluster(xyz: np.ndarray, valid: np.ndarray, clustered_grid: np.ndarray, stride: int,
                  eps: float) -> np.ndarray:
    """(H, W) bool: valid pixels within eps (in 3D) of a clustered grid point.

    Most pixels are confirmed by the grid pixel nearest to them in the image; only the others
    (cluster borders, depth edges) are searched in a KD tree of the cluster. Same result as
    searching all of them, 3x faster.
    """
    rows, cols = np.nonzero(valid)
    grid_rows = np.minimum((rows + stride // 2) // stride, clustered_grid.shape[0] - 1)
    grid_cols = np.minimum((cols + stride // 2) // stride, clustered_grid.shape[1] - 1)
    offsets = xyz[rows, cols] - xyz[grid_rows * stride, grid_cols * stride]
    near = clustered_grid[grid_rows, grid_cols] & (
        np.einsum('ij,ij->i', offsets, offsets) < eps ** 2)
    unsure = np.flatnonzero(~near)
    if len(unsure):
        tree = cKDTree(xyz[::stride, ::stride][clustered_grid])
        distance, _ = tree.query(xyz[rows[unsure], cols[unsure]], distance_upper_bound=eps)
        near[unsure] = np.isfinite(distance)
    keep = np.zeros_like(valid)
    keep[rows, cols] = near
    return keep


def _max_stride(xyz: np.ndarray, valid: np.ndarray, eps: float) -> int:
    """Largest grid stride whose point spacing stays under eps / 2 (median spacing of
    horizontally adjacent valid points), so subsampling never splits a DBSCAN cluster."""
    both = valid[:, 1:] & valid[:, :-1]
    if not both.any():
        return 1
    steps = xyz[:, 1:][both] - xyz[:, :-1][both]
    spacing = float(np.sqrt(np.median(np.einsum('ij,ij->i', steps, steps))))
    return max(1, int(eps / 2 / max(spacing, 1e-9)))


@functools.lru_cache(maxsize=None)
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


def clean_point_cloud(xyz: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Background removal at the sensor's resolution (before padding): plane, range, cluster.

    numpy's BLAS runs single-threaded here: these small products gain nothing from threads,
    and idle OpenBLAS threads busy-wait after each call, taking the cores from the network that
    runs next (benchmarks/bench_model.py: network 87 -> 48 ms per frame on 2 cores).
    """
    with _blas_controller().limit(limits=1, user_api='blas'):
        return _clean_point_cloud(xyz, cfg)


def _clean_point_cloud(xyz: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    xyz = invalid_to_zero(xyz)
    if cfg.max_depth > 0:
        xyz[xyz[..., 2] > cfg.max_depth] = 0.0
    if cfg.remove_plane:
        xyz = remove_support_plane(xyz, cfg)
    if cfg.keep_largest_cluster:
        xyz = keep_largest_cluster(xyz, cfg.dbscan_eps, cfg.dbscan_min_points,
                                   cfg.dbscan_stride)
    return xyz


def pad_square(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Zero-pad (H, W[, C]) to the square of `square_padding` (identity when disabled)."""
    if not cfg.pad_to_square:
        return image
    pads = square_padding(*image.shape[:2])
    return np.pad(image, pads + ((0, 0),) * (image.ndim - 2))


def resize_pair(rgb: np.ndarray, xyz: np.ndarray, size: int) -> Tuple[np.ndarray, np.ndarray]:
    """RGB bicubic, organized xyz nearest (never blends points across depth edges)."""
    rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_CUBIC)
    xyz = cv2.resize(xyz, (size, size), interpolation=cv2.INTER_NEAREST)
    return rgb, xyz


def preprocess(rgb: np.ndarray, xyz: np.ndarray, cfg: PreprocessConfig,
               cleaned_xyz: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Raw (H, W, 3) uint8 rgb and float32 xyz -> model-size (S, S, 3) uint8 and float32.

    cleaned_xyz: the output of `clean_point_cloud` if already computed (for example cached).
    The same function serves training, evaluation and the live Detector.
    """
    if cleaned_xyz is None:
        cleaned_xyz = clean_point_cloud(xyz, cfg)
    return resize_pair(pad_square(rgb, cfg), pad_square(cleaned_xyz, cfg), cfg.image_size)


def resize_mask(mask: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """gt mask -> model-size bool mask (padded like the images, nearest resize)."""
    mask = pad_square(mask.astype(np.uint8), cfg)
    return cv2.resize(mask, (cfg.image_size,) * 2, interpolation=cv2.INTER_NEAREST) > 0


def default_cache_dir() -> Path:
    base = os.environ.get('DBMR_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'dbmr_ros')
    return Path(base) / 'preprocessed'


class PreprocessCache:
    """Caches `clean_point_cloud` results per source file and config, never touching the source.

    The key hashes the file's absolute path, size, modification time and the cleaning options, so
    an edited file or a changed option is recomputed. Writes are atomic (temp file + rename).
    """

    def __init__(self, cfg: PreprocessConfig, directory: Optional[os.PathLike] = None):
        self.cfg = cfg
        self.directory = Path(directory) if directory else default_cache_dir()

    def _key(self, source: Path) -> str:
        stat = source.stat()
        options = {k: v for k, v in self.cfg.to_dict().items() if k != 'image_size'}
        text = json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns, options],
                          sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()

    def cleaned(self, source: os.PathLike, xyz: np.ndarray) -> np.ndarray:
        source = Path(source)
        path = self.directory / (self._key(source) + '.npy')
        if path.exists():
            try:
                cached = np.load(path, allow_pickle=False)
                if cached.shape == xyz.shape:
                    return cached
            except (OSError, ValueError):
                pass  # a damaged cache entry is recomputed below
        result = clean_point_cloud(xyz, self.cfg)
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: np.save(tmp, result))
        return result
