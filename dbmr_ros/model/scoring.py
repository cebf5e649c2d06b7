"""Token scores -> pixel anomaly maps: 2D (per patch, upsampled), 3D (per group, splatted onto
the pixels of the group's points), normalised by good-sample statistics, fused by product and
smoothed. Background pixels (no 3D point) score zero."""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from dbmr_ros.model.dbmrnet import TokenScores
from dbmr_ros.model.inputs import Groups, ModelInput
from dbmr_ros.model.point_ops import gather


class AnomalyMaps(NamedTuple):
    fused: torch.Tensor   # (B, S, S)
    map_2d: torch.Tensor  # (B, S, S)
    map_3d: torch.Tensor  # (B, S, S)
    score: torch.Tensor   # (B,) max of the fused map


def patch_map(patch_scores: torch.Tensor, size: int) -> torch.Tensor:
    """(B, L) on a square patch grid -> (B, S, S), bilinear."""
    grid = int(math.isqrt(patch_scores.shape[1]))
    x = patch_scores.view(-1, 1, grid, grid)
    return F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)[:, 0]


def group_map(group_scores: torch.Tensor, inp: ModelInput, groups: Groups) -> torch.Tensor:
    """(B, G) -> (B, S, S): each valid pixel takes the score of the group whose centre is nearest
    to its 3D point (the group it belongs to under kNN, extended to every point)."""
    batch, size = inp.valid.shape[0], inp.valid.shape[1]
    valid = inp.valid.reshape(batch, size * size)
    # Only valid pixels are compared with the centres (a part fills ~15 % of the image): each
    # row's valid pixels first, in raster order, up to the largest count in the batch.
    count = int(valid.sum(1).max())
    pixels = valid.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :count]
    points = gather(inp.xyz.reshape(batch, size * size, 3), pixels)          # (B, V, 3)
    nearest = torch.cdist(points, groups.centers).argmin(-1)                 # (B, V)
    scores = torch.gather(group_scores, 1, nearest) * torch.gather(valid, 1, pixels)
    return torch.zeros(batch, size * size, dtype=scores.dtype, device=scores.device).scatter_(
        1, pixels, scores).view(batch, size, size)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, S, S) separable Gaussian, truncated at 4 sigma, reflect padding."""
    if sigma <= 0:
        return maps
    radius = int(4 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    y = F.pad(maps[:, None], (radius, radius, 0, 0), mode='reflect')
    y = F.conv2d(y, kernel.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, radius, radius), mode='reflect')
    return F.conv2d(y, kernel.view(1, 1, -1, 1))[:, 0]


def raw_maps(tokens: TokenScores, inp: ModelInput, groups: Groups, score_2d: str = 'pixel'):
    """Unnormalised (B, S, S) 2D and 3D maps, zero on the background.

    2D: 'pixel' is the squared reconstruction error summed over the colour channels, at pixel
    resolution; 'feature' upsamples the per-patch decoder feature distance. 3D: the per-group
    decoder feature distance, splatted onto the pixels of the group's points.
    """
    size = inp.valid.shape[1]
    if score_2d == 'pixel':
        map_2d = ((inp.images - tokens.reconstruction.to(inp.images.dtype)) ** 2).sum(1)
    else:
        map_2d = patch_map(tokens.patch, size)
    return map_2d * inp.valid, group_map(tokens.group, inp, groups)


def anomaly_maps(tokens: TokenScores, inp: ModelInput, groups: Groups,
                 stats: Optional[dict], sigma: float, score_2d: str = 'pixel') -> AnomalyMaps:
    """Normalise each map by its mean on good validation foreground (`stats` 'mean_2d',
    'mean_3d'; 1 when absent), multiply, smooth, re-zero the background, score = max."""
    map_2d, map_3d = raw_maps(tokens, inp, groups, score_2d)
    stats = stats or {}
    map_2d = map_2d / stats.get('mean_2d', 1.0)
    map_3d = map_3d / stats.get('mean_3d', 1.0)
    foreground = inp.valid.to(map_2d.dtype)
    stacked = torch.stack([map_2d * map_3d, map_2d, map_3d])                # (3, B, S, S)
    smoothed = gaussian_blur(stacked.flatten(0, 1), sigma).view_as(stacked) * foreground
    fused, map_2d, map_3d = smoothed.unbind(0)
    return AnomalyMaps(fused, map_2d, map_3d, fused.flatten(1).amax(1))
