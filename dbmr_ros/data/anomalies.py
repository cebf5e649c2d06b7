"""Synthetic RGB-D anomalies on good samples, for anomaly-aware training and for choosing an
operating point without real defects (after DRAEM, extended to organized point clouds).

Each anomalous sample gets one region on the object: a Perlin-noise shape inside a random
ellipse around a random object pixel, so sizes range from a few pixels to a large part of
the object. In that region the sample gets, by chance:

- an RGB anomaly: foreign texture blended in with a random opacity, taken from another image
  of the batch (shifted), from shuffled 8 px patches of the same image, or procedural (two
  random colours mixed by Perlin noise);
- a 3D anomaly: the points pushed along their surface normal or along the viewing ray as a
  smooth bump or dent (a fraction of the object's RMS radius), or removed (a hole or a cut);
- or both at once, on the same region.

Batched and device-agnostic. Every random number is drawn on the (CPU) generator and then moved
to the data's device, so a seed gives the same anomalies on any device and a GPU never needs a
generator of its own.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple, Tuple

import numpy as np
import torch

from dbmr_ros.data.random_fields import Draws, perlin_draws, shifted
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.data.surface_anomalies import displaced
from dbmr_ros.dataclass_dict import from_dict, to_dict

# Values of `SyntheticBatch.kind`.
NONE, RGB, DISPLACED, REMOVED, RGB_DISPLACED, RGB_REMOVED = range(6)
KIND_NAMES = ('none', 'rgb', 'displaced', 'removed', 'rgb+displaced', 'rgb+removed')
_PATCH = 8  # px, the shuffled-patch texture's patch size


@dataclass(frozen=True)
class AnomalyConfig:
    """How anomalies are drawn. Saved in checkpoints (it shapes what the head learned)."""

    probability: float = 0.5            # share of samples that get an anomaly
    modality_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # rgb only, 3D only, both
    removal_share: float = 0.3          # 3D anomalies that remove points instead of moving them
    radius: Tuple[float, float] = (0.015, 0.2)   # ellipse semi-axis, fraction of image side
    perlin_cells: Tuple[int, int] = (2, 32)      # Perlin grid cells across the image
    perlin_threshold: Tuple[float, float] = (0.0, 0.5)  # region: where the noise exceeds this
    min_pixels: int = 6                 # a smaller region falls back to the whole ellipse
    opacity: Tuple[float, float] = (0.2, 1.0)    # of the foreign texture
    texture_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)  # other image, patches, noise
    displacement: Tuple[float, float] = (0.03, 0.2)  # of the object's RMS radius
    smoothing: float = 2.0              # px, Gaussian edge of a bump or dent

    def __post_init__(self):
        for name in ('probability', 'removal_share'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'anomaly {name} must be in [0, 1]')
        for name in ('modality_weights', 'texture_weights'):
            weights = getattr(self, name)
            if len(weights) != 3 or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f'{name} must be three non-negative weights, not all zero')
        for name in ('radius', 'perlin_cells', 'perlin_threshold', 'opacity', 'displacement'):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f'{name}: lower bound {low} above upper bound {high}')

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'AnomalyConfig':
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        for kind, settings in _REMOVED_KINDS.items():
            if not values.get(kind):   # never drawn: their settings changed nothing
                for name in settings:
                    values.pop(name, None)
        return from_dict(cls, values, 'anomaly', {kind: 0.0 for kind in _REMOVED_KINDS})


# Kinds of synthetic anomaly that earlier versions could draw (their share of samples) and the
# settings of each; measured no better (docs/design_notes.md, "Options that left").
_REMOVED_KINDS = {'stroke_share': ('stroke_width', 'stroke_length'),
                  'rough_share': ('rough_cells',),
                  'relief_share': ('relief_sigma', 'relief_gain', 'relief_visible')}


class SyntheticBatch(NamedTuple):
    rgb: torch.Tensor    # (B, S, S, 3) uint8, with the anomalies
    xyz: torch.Tensor    # (B, S, S, 3) float, with the anomalies; 0 = invalid
    mask: torch.Tensor   # (B, S, S) bool, the anomalous pixels (ground truth)
    kind: torch.Tensor   # (B,) long, one of NONE ... RGB_REMOVED (NONE when the mask is empty)


def synthesize(rgb: torch.Tensor, xyz: torch.Tensor, cfg: AnomalyConfig,
               generator: torch.Generator, probability: float = None) -> SyntheticBatch:
    """Anomalies on good samples: rgb (B, S, S, 3) uint8, xyz (B, S, S, 3) float (0 = invalid).

    `probability` overrides cfg.probability (1.0 to corrupt every sample). The number of
    random draws depends on the batch's shape only, never on its content, so a generator's
    stream stays aligned from batch to batch.
    """
    batch, device = rgb.shape[0], rgb.device
    p = cfg.probability if probability is None else probability
    draw = Draws(generator, batch, device)
    valid = valid_mask(xyz)

    anomalous = draw.uniform() < p
    modality = draw.choice(cfg.modality_weights)                     # 0 rgb, 1 3D, 2 both
    removed = draw.uniform() < cfg.removal_share
    region = random_region(valid, cfg, draw, anomalous)              # (B, S, S) bool
    mask = region & anomalous[:, None, None]
    has_rgb = mask & (modality != 1)[:, None, None]
    has_3d = mask & (modality != 0)[:, None, None]

    texture = foreign_texture(rgb, cfg, draw, anomalous & (modality != 1))
    opacity = draw.uniform(*cfg.opacity)[:, None, None, None]
    blended = rgb.float() * (1 - opacity) + texture * opacity
    out_rgb = torch.where(has_rgb[..., None], blended.round().clamp(0, 255).to(torch.uint8), rgb)

    # A bump's Gaussian edge reaches a little beyond the region (the ground truth stays the
    # region); removal takes exactly the region.
    bumped = has_3d & ~removed[:, None, None]
    moved = displaced(xyz, valid, bumped, cfg, draw)
    gone = has_3d & removed[:, None, None]
    out_xyz = torch.where(gone[..., None], torch.zeros_like(xyz), moved)

    kind = torch.full((batch,), NONE, dtype=torch.long, device=device)
    kind = torch.where(modality == 0, RGB, kind)
    three_d = torch.where(removed, torch.full_like(kind, REMOVED),
                          torch.full_like(kind, DISPLACED))
    kind = torch.where(modality == 1, three_d, kind)
    kind = torch.where(modality == 2, three_d + (RGB_DISPLACED - DISPLACED), kind)
    kind = torch.where(mask.flatten(1).any(1), kind, torch.full_like(kind, NONE))
    return SyntheticBatch(out_rgb, out_xyz, mask, kind)


def random_region(valid: torch.Tensor, cfg: AnomalyConfig, draw: Draws,
                  needed: torch.Tensor = None) -> torch.Tensor:
    """(B, S, S) bool region on the object: Perlin shape inside an ellipse centred on a random
    valid pixel; the whole ellipse (on the object) where the Perlin shape leaves too little.
    `needed` (B,) bool: the samples whose region is read (the draws are the same)."""
    batch, size = valid.shape[:2]
    # A random valid pixel by inverse CDF over the valid pixels in raster order.
    counts = valid.flatten(1).sum(1)
    rank = (draw.uniform() * counts).floor().long().clamp_min(0)
    cumulative = valid.flatten(1).long().cumsum(1)
    centre = torch.searchsorted(cumulative, (rank + 1)[:, None]).clamp_max(size * size - 1)[:, 0]
    centre_row, centre_col = (centre // size).float(), (centre % size).float()

    semi_major = draw.log_uniform(*cfg.radius) * size
    semi_minor = semi_major * draw.uniform(0.3, 1.0)
    along, across = _rotated_offsets(size, centre_row, centre_col, draw.uniform(0, math.pi))
    ellipse = ((along / semi_major[:, None, None]) ** 2
               + (across / semi_minor[:, None, None]) ** 2 <= 1) & valid

    noise = perlin_draws(size, cfg.perlin_cells, draw, needed)
    threshold = draw.uniform(*cfg.perlin_threshold)[:, None, None]
    shaped = ellipse & (noise > threshold)
    enough = shaped.flatten(1).sum(1) >= cfg.min_pixels
    return torch.where(enough[:, None, None], shaped, ellipse)


def _rotated_offsets(size: int, centre_row: torch.Tensor, centre_col: torch.Tensor,
                     angle: torch.Tensor):
    """(B, S, S) pixel offsets from each sample's centre along and across a direction at
    `angle` (B,) radians from the image's columns."""
    axis = torch.arange(size, device=angle.device, dtype=torch.float32)
    d_row = axis[None, :, None] - centre_row[:, None, None]
    d_col = axis[None, None, :] - centre_col[:, None, None]
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    return cos * d_col + sin * d_row, -sin * d_col + cos * d_row


def foreign_texture(rgb: torch.Tensor, cfg: AnomalyConfig, draw: Draws,
                    needed: torch.Tensor = None) -> torch.Tensor:
    """(B, S, S, 3) float texture per sample from one of three sources (see module doc);
    `needed` (B,) bool: the samples whose texture is read (the draws are the same)."""
    batch, size = rgb.shape[:2]
    device = rgb.device
    source = draw.choice(cfg.texture_weights)

    # Another image of the batch, shifted with wrap-around (itself, shifted, for a batch of 1).
    other = (torch.arange(batch, device=device)
             + (draw.uniform() * max(batch - 1, 1)).floor().long() + 1) % batch
    from_other = shifted(rgb[other].float(), draw.uniform(0, size, (2,)).floor().long())

    # Shuffled patches of the same image.
    grid = size // _PATCH
    order = draw.permutation_keys(grid * grid).argsort(1)
    cropped = rgb[:, :grid * _PATCH, :grid * _PATCH].float()
    patches = cropped.reshape(batch, grid, _PATCH, grid, _PATCH, 3).permute(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(batch, grid * grid, -1)
    patches = torch.gather(patches, 1, order[..., None].expand_as(patches))
    shuffled = rgb.float().clone()
    shuffled[:, :grid * _PATCH, :grid * _PATCH] = patches.view(
        batch, grid, grid, _PATCH, _PATCH, 3).permute(0, 1, 3, 2, 4, 5).reshape(
        batch, grid * _PATCH, grid * _PATCH, 3)

    # Two random colours mixed by Perlin noise.
    colours = draw.uniform(0, 255, (2, 3))
    procedural_needed = None if needed is None else needed & (source == 2)
    weight = (perlin_draws(size, (4, 64), draw, procedural_needed)[..., None] + 1) / 2
    procedural = colours[:, None, None, 0] * (1 - weight) + colours[:, None, None, 1] * weight

    choice = source[:, None, None, None]
    return torch.where(choice == 0, from_other, torch.where(choice == 1, shuffled, procedural))


def anomalous_copies(rgb: np.ndarray, xyz: np.ndarray, cfg: AnomalyConfig, seed: int,
                     copies: int = 2, batch_size: int = 16):
    """`copies` anomalous versions of every good sample (model-size numpy arrays), seeded:
    rgb (N * copies, S, S, 3) uint8, xyz float32, mask (N * copies, S, S) bool, kind
    (N * copies,) int (NONE ... RGB_REMOVED). For choosing an operating point and selecting
    models without real defects."""
    generator = torch.Generator().manual_seed(seed)
    out = {'rgb': [], 'xyz': [], 'mask': [], 'kind': []}
    for _ in range(copies):
        for start in range(0, len(rgb), batch_size):
            made = synthesize(torch.from_numpy(rgb[start:start + batch_size]),
                              torch.from_numpy(xyz[start:start + batch_size]), cfg, generator,
                              probability=1.0)
            for key in out:
                out[key].append(getattr(made, key).numpy())
    return tuple(np.concatenate(out[k]) for k in ('rgb', 'xyz', 'mask', 'kind'))
