"""One RGB-D sample as every reader returns it."""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np


@dataclass
class Sample:
    """A registered RGB image and organized point cloud, with its label.

    rgb: (H, W, 3) uint8. xyz: (H, W, 3) float32 in metres, invalid pixels exactly (0, 0, 0).
    gt: (H, W) bool anomaly mask, None where the split has no masks (train / validation).
    """

    rgb: np.ndarray
    xyz: np.ndarray
    gt: Optional[np.ndarray] = None
    label: int = 0
    defect: str = 'good'
    name: str = ''
    intrinsics: Optional[np.ndarray] = None  # (3, 3) pinhole K, where the dataset has one
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8:
            raise ValueError(f'{self.name}: rgb must be (H, W, 3) uint8, got '
                             f'{self.rgb.shape} {self.rgb.dtype}')
        if self.xyz.shape != self.rgb.shape:
            raise ValueError(f'{self.name}: xyz {self.xyz.shape} does not match rgb '
                             f'{self.rgb.shape}')
        if self.gt is not None and self.gt.shape != self.rgb.shape[:2]:
            raise ValueError(f'{self.name}: gt {self.gt.shape} does not match rgb '
                             f'{self.rgb.shape[:2]}')


def valid_mask(xyz):
    """(..., H, W, 3) numpy array or torch tensor -> (..., H, W) bool of the same kind: pixels
    with a finite, non-zero 3D point. The one definition of a valid point (readers, the
    preprocessing, the model, the anomaly synthesis and the node all use it)."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    # Per channel: reductions over a length-3 last axis are ~7x slower in numpy.
    finite = (lambda a: a.isfinite()) if hasattr(xyz, 'isfinite') else np.isfinite  # torch
    return finite(x) & finite(y) & finite(z) & ((x != 0) | (y != 0) | (z != 0))


def invalid_to_zero(xyz: np.ndarray) -> np.ndarray:
    """(..., H, W, 3) -> float32 with every invalid point exactly (0, 0, 0), the convention of
    every reader (a point with one NaN coordinate is invalid as a whole). A float32 input that
    already follows it is returned as it is, not copied."""
    xyz = np.asarray(xyz, dtype=np.float32)
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    finite = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    if finite.all():  # then the invalid points are the zero ones already
        return xyz
    valid = finite & ((x != 0) | (y != 0) | (z != 0))
    return np.where(valid[..., None], xyz, np.float32(0))
