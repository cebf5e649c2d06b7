"""The synthetic anomalies that move a part's points (`anomalies.py` draws where and which):
a smooth bump or dent, a rough patch, a foreign fine relief."""
from typing import TYPE_CHECKING

import torch

from dbmr_ros.data.random_fields import Draws, perlin_with_cells, shifted
from dbmr_ros.model.grid import gaussian_blur, surface_normals

if TYPE_CHECKING:   # anomalies.py imports this module
    from dbmr_ros.data.anomalies import AnomalyConfig


def displaced(xyz: torch.Tensor, valid: torch.Tensor, region: torch.Tensor, cfg: 'AnomalyConfig',
              draw: Draws) -> torch.Tensor:
    """xyz with a smooth bump or dent over `region`: along the normal or the viewing ray, its
    height a random fraction of the object's RMS radius, its edge Gaussian (cfg.smoothing);
    for a share cfg.rough_share of samples the height varies across the region as Perlin
    noise, up and down, peaking at that fraction (a rough patch)."""
    along_normal = draw.uniform() < 0.5
    sign = torch.where(draw.uniform() < 0.5, -1.0, 1.0)
    height = draw.uniform(*cfg.displacement) * sign * rms_radius(xyz, valid)
    profile = edge_profile(region, cfg.smoothing)
    if cfg.rough_share > 0:  # no draws otherwise: a config without them keeps its stream
        # Noise cells scaled to the region (its width: the root of its area), so that a
        # small patch is as rough as a large one instead of one cell's slope.
        size = region.shape[1]
        width = region.flatten(1).sum(1).float().sqrt().clamp_min(1.0)
        cells = (draw.uniform(*cfg.rough_cells) * size / width).clamp(1, size // 2).round()
        noise = perlin_with_cells(size, cells, size // 2 + 2, draw) * profile
        noise = _unit_peak(noise)
        rough = draw.uniform() < cfg.rough_share
        profile = torch.where(rough[:, None, None], noise, profile)
    normals = surface_normals(xyz, valid)
    rays = xyz / xyz.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    # Positive height moves towards the camera: against the ray, along the (facing) normal.
    direction = torch.where(along_normal[:, None, None, None], normals, -rays)
    offset = (height[:, None, None] * profile * valid)[..., None] * direction
    return xyz + offset


def foreign_relief(xyz: torch.Tensor, valid: torch.Tensor, region: torch.Tensor,
                   cfg: 'AnomalyConfig', draw: Draws):
    """xyz whose fine relief inside `region` is another place's: the 3D counterpart of the
    foreign texture, for defects of fine geometry (a damaged thread, a knurl worn smooth).

    The relief is the range's high-pass: the distance from the camera minus its Gaussian of
    cfg.relief_sigma px (at 224 px) over the valid points. Inside the region it becomes a
    gain (cfg.relief_gain) times the relief of the same part shifted by a random offset, as
    the foreign texture shifts an image: a thread's flanks where the part was smooth, a thread
    sanded flat (a gain near 0, or a smooth source), a relief exaggerated; the part's smooth
    shape stays, and the region's edge is Gaussian (cfg.smoothing) as a bump's.
    Returns (xyz, visible): visible (B, S, S) bool is the region's pixels whose range changed
    by at least cfg.relief_visible of the part's RMS radius (the change blurred by 1 px first,
    so the relief's zero crossings do not perforate it): a relief swapped for a like one is
    no defect, and the ground truth must not say it is one.
    """
    size = xyz.shape[1]
    weights = valid.to(xyz.dtype)
    sigma = cfg.relief_sigma * size / 224
    distance = xyz.norm(dim=-1)
    smooth = (gaussian_blur(distance * weights, sigma)
              / gaussian_blur(weights, sigma).clamp_min(1e-6))
    relief = (distance - smooth) * weights
    source = shifted(torch.stack([relief, weights], -1),
                     draw.uniform(0, size, (2,)).floor().long())
    foreign = source[..., 0] * source[..., 1]            # an invalid source pixel: no relief
    gain = draw.uniform(*cfg.relief_gain)[:, None, None]
    change = edge_profile(region, cfg.smoothing) * (gain * foreign - relief) * weights
    out = xyz * ((distance + change) / distance.clamp_min(1e-9))[..., None]
    threshold = cfg.relief_visible * rms_radius(xyz, valid)[:, None, None]
    return out, region & (gaussian_blur(change.abs(), 1.0) >= threshold)


def edge_profile(region: torch.Tensor, smoothing: float) -> torch.Tensor:
    """(B, S, S) bool region -> its Gaussian blur (sigma `smoothing` px) scaled to a peak of
    1: how far a bump, a rough patch or a foreign relief applies at each pixel."""
    return _unit_peak(gaussian_blur(region.float(), smoothing))


def _unit_peak(maps: torch.Tensor) -> torch.Tensor:
    """(B, S, S) maps divided by their largest magnitude each (an empty map stays 0)."""
    return maps / maps.abs().flatten(1).amax(1).clamp_min(1e-6)[:, None, None]


def rms_radius(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B,) RMS distance of the valid points from their centroid."""
    weights = valid[..., None].to(xyz.dtype)
    count = weights.flatten(1).sum(1).clamp_min(1)
    centroid = (xyz * weights).flatten(1, 2).sum(1) / count[:, None]
    spread = ((xyz - centroid[:, None, None]) ** 2).sum(-1) * valid
    return (spread.flatten(1).sum(1) / count).sqrt()
