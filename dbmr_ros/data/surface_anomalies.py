"""The synthetic anomaly that moves a part's points (`anomalies.py` draws where and which): a
smooth bump or dent."""
from typing import TYPE_CHECKING

import torch

from dbmr_ros.data.random_fields import Draws, for_samples
from dbmr_ros.model.grid import gaussian_blur, surface_normals

if TYPE_CHECKING:   # anomalies.py imports this module
    from dbmr_ros.data.anomalies import AnomalyConfig


def displaced(xyz: torch.Tensor, valid: torch.Tensor, region: torch.Tensor, cfg: 'AnomalyConfig',
              draw: Draws) -> torch.Tensor:
    """xyz with a smooth bump or dent over `region`: along the normal or the viewing ray, its
    height a random fraction of the object's RMS radius, its edge Gaussian (cfg.smoothing)."""
    along_normal = draw.uniform() < 0.5
    sign = torch.where(draw.uniform() < 0.5, -1.0, 1.0)
    # Of the whole batch: a sum over one sample's points rounds by the batch's shape.
    height = draw.uniform(*cfg.displacement) * sign * rms_radius(xyz, valid)

    def bump(xyz, valid, region, along_normal, height):
        profile = edge_profile(region, cfg.smoothing)
        normals = surface_normals(xyz, valid)
        rays = xyz / xyz.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        # Positive height moves towards the camera: against the ray, along the (facing) normal.
        direction = torch.where(along_normal[:, None, None, None], normals, -rays)
        offset = (height[:, None, None] * profile * valid)[..., None] * direction
        return xyz + offset

    # Only the samples with a region move (the others' offset would be zero).
    moving = region.flatten(1).any(1)
    moved = for_samples(moving, bump, xyz, valid, region, along_normal, height)
    return torch.where(moving[:, None, None, None], moved, xyz)


def edge_profile(region: torch.Tensor, smoothing: float) -> torch.Tensor:
    """(B, S, S) bool region -> its Gaussian blur (sigma `smoothing` px) scaled to a peak of
    1: how far a bump applies at each pixel."""
    blurred = gaussian_blur(region.float(), smoothing)
    return blurred / blurred.abs().flatten(1).amax(1).clamp_min(1e-6)[:, None, None]


def rms_radius(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) RMS distance of the valid points from their centroid."""
    weights = valid[..., None].to(xyz.dtype)
    count = weights.flatten(1).sum(1).clamp_min(1)
    centroid = (xyz * weights).flatten(1, 2).sum(1) / count[:, None]
    spread = ((xyz - centroid[:, None, None]) ** 2).sum(-1) * valid
    return (spread.flatten(1).sum(1) / count).sqrt()
