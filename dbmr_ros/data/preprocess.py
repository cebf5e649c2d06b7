"""Point cloud and image preprocessing as the field does it (BTF / M3DM / CFM), plus resizing.

The order follows the reference scripts: remove the support plane (RANSAC on the border strip),
pad to a square whose side is rounded up to the next 100, keep the largest cluster (`clustering`:
DBSCAN as the reference, or by default the same cluster found on the organized grid), then
resize to the model's input size. Unlike the reference scripts nothing is written back into the
dataset: `preprocess_cache.PreprocessCache` stores results in a cache directory of its own.
"""
import functools
import math
from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from dbmr_ros.data.clustering import CLUSTER_METHODS, largest_cluster_mask
from dbmr_ros.data.sample import invalid_to_zero, valid_mask
from dbmr_ros.dataclass_dict import from_dict, to_dict


# RANSAC's hypotheses are drawn from this seed, so a frame always gives the same points.
RANSAC_SEED = 0


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
    # 'grid': connected components of the organized grid (neighbours within eps in 3D), joined
    # where a component comes within eps of the kept one: on all 164 cable_gland samples the
    # same points as DBSCAN, 2.4x faster. 'dbscan': the reference scripts' DBSCAN.
    cluster_method: str = 'grid'
    dbscan_eps: float = 0.006         # m (both methods)
    dbscan_min_points: int = 30
    # DBSCAN runs on every n-th pixel of the organized grid (min_points scaled by 1 / n^2) and the
    # remaining points join the kept cluster when within eps of it: ~30x faster at n = 3 and the
    # same object mask to within 0.3 % of its points on cable_gland. 1 = the exact reference.
    dbscan_stride: int = 3
    plane_max_points: int = 4000      # strip points the RANSAC hypotheses are scored on
    max_depth: float = 0.0            # m; > 0 drops points farther than this (working volume)

    def __post_init__(self):
        if self.cluster_method not in CLUSTER_METHODS:
            raise ValueError(f'cluster_method must be one of {CLUSTER_METHODS}, got '
                             f'{self.cluster_method!r}')

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'PreprocessConfig':
        # The RANSAC seed left the options: it is RANSAC_SEED.
        return from_dict(cls, values, 'preprocessing', {'seed': RANSAC_SEED})


def fit_plane_ransac(points: np.ndarray, threshold: float, points_per_hypothesis: int,
                     iterations: int, rng: np.random.Generator,
                     max_points: int = 0) -> np.ndarray:
    """Plane (a, b, c, d) with unit normal, a*x + b*y + c*z + d = 0, by RANSAC.

    points: (N, 3). Each hypothesis is the least-squares plane of `points_per_hypothesis` random
    points (as Open3D's segment_plane with ransac_n > 3); the best one by inlier count (the
    first of equals) is refitted on its inliers. Hypotheses are fitted and scored vectorised,
    64 at a time, and the search stops at the first one that every scored point supports: no
    later one can beat it, so the result is the exhaustive search's (on a clean support plane,
    as on MVTec 3D-AD's borders, the first block has one: 16x less work).
    """
    n = len(points)
    if n < 3:
        raise ValueError(f'plane fit needs at least 3 points, got {n}')
    k = min(points_per_hypothesis, n)
    points_t = np.ascontiguousarray(points.T)                            # (3, N)
    hypotheses = rng.integers(0, n, size=(iterations, k))               # (I, k)
    scored = points if not max_points or n <= max_points else points[
        rng.choice(n, max_points, replace=False)]
    # Inlier counting in float32 (millimetre thresholds at metre ranges lose nothing), in
    # cache-sized blocks of hypotheses, each row of distances contiguous (3x faster than
    # (points, hypotheses) blocks).
    scored_t = np.ascontiguousarray(scored.T, dtype=np.float32)          # (3, M)
    best = (-1, None, None)  # (inlier count, normal, offset)
    for start in range(0, iterations, 64):
        normals, offsets = _least_squares_planes(points_t[:, hypotheses[start:start + 64]])
        distances = normals.astype(np.float32) @ scored_t                 # (64, M)
        distances += offsets.astype(np.float32)[:, None]
        np.abs(distances, out=distances)
        counts = np.count_nonzero(distances < threshold, axis=1)
        i = int(np.argmax(counts))
        if counts[i] > best[0]:
            best = (int(counts[i]), normals[i], offsets[i])
        if best[0] == len(scored):
            break
    _, normal, offset = best
    inliers = np.abs(points @ normal + offset) < threshold
    normal, offset = _least_squares_planes(points_t[:, None, inliers])
    return np.concatenate([normal[0], offset]).astype(np.float64)


def _least_squares_planes(points: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """points: (3, P, k), coordinate first -> unit normals (P, 3) and offsets (P,) of the
    best-fit planes of P sets of k points. Coordinate first, every reduction runs over a
    contiguous last axis: 4x faster than reducing the middle axis of (P, k, 3)."""
    centroid = points.mean(axis=2)                                         # (3, P)
    centred = points - centroid[..., None]
    covariance = np.empty((points.shape[1], 3, 3))
    for i in range(3):
        for j in range(i, 3):
            covariance[:, i, j] = covariance[:, j, i] = np.einsum('pk,pk->p', centred[i],
                                                                  centred[j])
    normals = np.linalg.eigh(covariance)[1][:, :, 0]  # eigenvector of the smallest eigenvalue
    offsets = -np.einsum('pc,cp->p', normals, centroid)
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


def support_plane_mask(xyz: np.ndarray, valid: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(H, W) bool: the valid points on the support plane fitted on the border strip (none
    when fewer than 3 border points are valid). xyz: (H, W, 3) float32, invalid points zero."""
    edge_points = border_strip(xyz, cfg.plane_border).astype(np.float64)
    if len(edge_points) < 3:
        return np.zeros_like(valid)  # nothing visible on the border: no plane to remove
    plane = fit_plane_ransac(edge_points, cfg.plane_ransac_threshold, cfg.plane_ransac_points,
                             cfg.plane_ransac_iterations, np.random.default_rng(RANSAC_SEED),
                             cfg.plane_max_points)
    # Per channel in float32 over the whole grid: 8x faster than gathering the valid points in
    # float64, and millimetres at metre range lose nothing.
    a, b, c, d = plane.astype(np.float32)
    distance = np.abs(xyz[..., 0] * a + xyz[..., 1] * b + xyz[..., 2] * c + d)
    return valid & (distance < cfg.plane_clear_distance)


def square_padding(height: int, width: int) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """((top, bottom), (left, right)) padding to a square with side rounded up to the next 100."""
    side = max(int(math.ceil(height / 100.0)) * 100, int(math.ceil(width / 100.0)) * 100)
    top, left = (side - height) // 2, (side - width) // 2
    return (top, side - height - top), (left, side - width - left)


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
    # One mask narrowed step by step, the points written once at the end.
    xyz = invalid_to_zero(xyz)
    keep = valid_mask(xyz)
    if cfg.max_depth > 0:
        keep &= xyz[..., 2] <= cfg.max_depth
    if cfg.remove_plane:
        keep &= ~support_plane_mask(xyz, keep, cfg)
    if cfg.keep_largest_cluster:
        keep = largest_cluster_mask(xyz, keep, cfg.dbscan_eps, cfg.dbscan_min_points,
                                    cfg.dbscan_stride, cfg.cluster_method)
    return np.where(keep[..., None], xyz, np.float32(0))


def pad_square(image: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """Zero-pad (H, W[, C]) to the square of `square_padding` (identity when disabled)."""
    if not cfg.pad_to_square:
        return image
    pads = square_padding(*image.shape[:2])
    return np.pad(image, pads + ((0, 0),) * (image.ndim - 2))


def to_input_size(model_map: np.ndarray, shape: Tuple[int, int],
                  cfg: PreprocessConfig) -> np.ndarray:
    """A model-size float map (S, S[, C]) back at the raw input's (H, W[, C]): bilinear
    (OpenCV's half-pixel rule) to the square of `pad_square`, its padding cropped."""
    height, width = shape
    (top, bottom), (left, right) = (square_padding(height, width) if cfg.pad_to_square
                                    else ((0, 0), (0, 0)))
    size = (height + top + bottom, width + left + right)
    full = cv2.resize(model_map, size[::-1], interpolation=cv2.INTER_LINEAR)
    full = full.reshape(*size, *model_map.shape[2:])  # OpenCV drops a channel axis of 1
    return full[top:top + height, left:left + width]


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
