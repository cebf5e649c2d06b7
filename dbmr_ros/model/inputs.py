"""Model-size arrays -> network tensors: image normalisation, point selection and grouping.

Shared by training and inference so both see exactly the same input.
"""
from typing import NamedTuple, Optional

import torch

from dbmr_ros.cuda_graphs import capturing
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.model.point_ops import fps, gather, knn

PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


class ModelInput(NamedTuple):
    images: torch.Tensor        # (B, 3, S, S) float, normalised
    xyz: torch.Tensor           # (B, S, S, 3) float, centred and scaled per sample; 0 = invalid
    valid: torch.Tensor         # (B, S, S) bool, pixels with a 3D point
    points: torch.Tensor        # (B, N, 3) float, the subsample that is grouped
    point_pixels: torch.Tensor  # (B, N) long, flat pixel index of each point in the S x S grid
    centroid: torch.Tensor      # (B, 3) metres: xyz = (metric - centroid) / scale
    scale: torch.Tensor         # (B,) metres, RMS radius of the valid points


class Groups(NamedTuple):
    neighborhoods: torch.Tensor  # (B, G, k, 3) coordinates relative to their centre
    centers: torch.Tensor        # (B, G, 3)
    center_pixels: torch.Tensor  # (B, G) long, flat pixel index of each centre
    member_pixels: torch.Tensor  # (B, G, k) long, flat pixel index of each neighbourhood point


class Targets(NamedTuple):
    """What the masked reconstruction is asked for: the input itself (the paper), or the clean
    sample behind a synthetically corrupted input (anomaly-aware training)."""
    images: torch.Tensor         # (B, 3, S, S) normalised
    neighborhoods: torch.Tensor  # (B, G, k, 3) relative to the input's group centres


def normalise_images(rgb: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float, in the memory layout of a contiguous (B, S, S,
    3) input whatever the input's: the network's kernels are chosen by layout, and a result
    must not depend on which path (numpy, torch, batched) prepared the image; training's
    batches are contiguous."""
    return (rgb.contiguous().permute(0, 3, 1, 2).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD


def denormalise_images(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) float -> (B, S, S, 3) float in [0, 255]."""
    return ((images * PIXEL_STD + PIXEL_MEAN) * 255.0).clamp(0, 255).permute(0, 2, 3, 1)


def prepare(rgb: torch.Tensor, xyz: torch.Tensor, num_points: int, min_points: int,
            generator: Optional[torch.Generator] = None) -> ModelInput:
    """rgb (B, S, S, 3) uint8 and xyz (B, S, S, 3) float (0 = invalid) -> ModelInput.

    Points are centred on their centroid and scaled by their RMS radius, per sample. `num_points`
    of the valid pixels are kept, evenly spaced in raster order (deterministic); with a
    generator the spacing gets a random offset per sample (training augmentation).
    """
    batch, size = xyz.shape[0], xyz.shape[1]
    valid = valid_mask(xyz)
    counts = valid.flatten(1).sum(1)
    if not capturing():  # a recorded graph's caller checks before each replay
        require_counts(counts, min_points)
    xyz = torch.where(valid[..., None], xyz, torch.zeros((), dtype=xyz.dtype,
                                                         device=xyz.device)).float()
    weights = valid[..., None].float()
    centroid = (xyz * weights).sum((1, 2)) / counts[:, None]                 # (B, 3)
    centred = (xyz - centroid[:, None, None]) * weights
    scale = ((centred ** 2).sum(-1).sum((1, 2)) / counts).sqrt().clamp_min(1e-6)  # (B,)
    xyz = centred / scale[:, None, None, None]

    offset = torch.zeros(batch, 1, device=xyz.device) if generator is None else torch.rand(
        batch, 1, generator=generator).to(xyz.device)
    ranks = even_ranks(counts, num_points, offset)                           # (B, N)
    cumulative = valid.flatten(1).long().cumsum(1)                           # (B, S*S)
    point_pixels = torch.searchsorted(cumulative, ranks + 1)                 # first with rank
    points = gather(xyz.reshape(batch, size * size, 3), point_pixels)
    return ModelInput(normalise_images(rgb), xyz, valid, points, point_pixels, centroid, scale)


def require_points(xyz: torch.Tensor, min_points: int) -> None:
    """ValueError unless every cloud (B, S, S, 3) keeps `min_points` valid points (reads the
    counts back: one synchronisation on a GPU)."""
    require_counts(valid_mask(xyz).flatten(1).sum(1), min_points)


def require_counts(counts, min_points: int) -> None:
    """ValueError unless every count (a tensor or a list) is at least `min_points`."""
    fewest = int(counts.min()) if isinstance(counts, torch.Tensor) else min(counts)
    if fewest < min_points:
        raise ValueError(f'a cloud has {fewest} valid points after preprocessing; '
                         f'at least {min_points} are needed')


def even_ranks(counts: torch.Tensor, num_points: int, offset: torch.Tensor) -> torch.Tensor:
    """(B, N) ranks among each sample's `counts` (B,) valid points, evenly spaced and shifted by
    offset (B, 1) in [0, 1). Clamped: in float32, N - 1 + offset rounds to N for an offset
    within 2^-13 of 1, which would ask for the point after the last one."""
    spaced = (torch.arange(num_points, device=counts.device)[None] + offset) * counts[:, None]
    ranks = (spaced / num_points).floor().long()
    return torch.minimum(ranks, counts[:, None] - 1)


def group_points(inp: ModelInput, num_groups: int, group_size: int) -> Groups:
    """Farthest point sampling of centres, kNN neighbourhoods relative to each centre."""
    center_idx = fps(inp.points, num_groups)                                # (B, G)
    centers = gather(inp.points, center_idx)                                # (B, G, 3)
    neighbor_idx = knn(inp.points, centers, group_size)                     # (B, G, k)
    neighborhoods = gather(inp.points, neighbor_idx) - centers.unsqueeze(2)
    center_pixels = torch.gather(inp.point_pixels, 1, center_idx)
    member_pixels = torch.gather(inp.point_pixels, 1, neighbor_idx.flatten(1)).view_as(
        neighbor_idx)
    return Groups(neighborhoods, centers, center_pixels, member_pixels)


def metric_xyz(inp: ModelInput) -> torch.Tensor:
    """(B, S, S, 3) the input cloud back in metres (0 where invalid)."""
    metric = inp.xyz * inp.scale[:, None, None, None] + inp.centroid[:, None, None]
    return metric * inp.valid[..., None]


def clean_targets(inp: ModelInput, groups: Groups, clean_rgb: torch.Tensor,
                  clean_xyz: torch.Tensor) -> Targets:
    """Targets from the clean sample (B, S, S, 3) uint8 / float metres behind a corrupted input:
    its image, and its points at the pixels each group of the corrupted input holds, in the
    input's frame (same centroid and scale). A displaced point's target is where it was."""
    batch, size = clean_xyz.shape[:2]
    clean = (clean_xyz.float() - inp.centroid[:, None, None]) / inp.scale[:, None, None, None]
    members = gather(clean.reshape(batch, size * size, 3), groups.member_pixels)
    return Targets(normalise_images(clean_rgb), members - groups.centers.unsqueeze(2))
