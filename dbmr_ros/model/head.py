"""The learned scoring head: a small U-Net that reads the input, its reconstruction and the
paper's maps per pixel and predicts the probability that the pixel is anomalous. It is trained
on synthetic anomalies (focal loss on their masks); the network is frozen meanwhile.

It works at half the model's resolution (a strided first convolution) and returns logits at
full resolution: about 1 GFLOP per 224 x 224 frame for the default widths.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from dbmr_ros.model.config import DBMRConfig
from dbmr_ros.model.grid import surface_normals
from dbmr_ros.model.inputs import Groups, metric_xyz, ModelInput
from dbmr_ros.model.point_ops import gather

# Per-pixel input channels, in order (see `head_inputs`).
INPUT_CHANNELS = (('image', 3), ('reconstruction', 3), ('map_2d', 1), ('map_3d', 1),
                  ('valid', 1), ('normals', 3), ('xyz', 3))
NUM_INPUTS = sum(n for _, n in INPUT_CHANNELS)
# Appended where the model has a shape prior (DBMRConfig.shape_prior_components).
SHAPE_CHANNEL = ('shape_prior', 1)


def input_channels(shape_prior: bool) -> tuple:
    """The head's input channels, in order, as (name, count) pairs."""
    return INPUT_CHANNELS + ((SHAPE_CHANNEL,) if shape_prior else ())


def head_inputs(inp: ModelInput, reconstruction: torch.Tensor, map_2d: torch.Tensor,
                map_3d: torch.Tensor,
                shape_map: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The head's per-pixel inputs (B, C, S, S), channels as `input_channels`: NUM_INPUTS, and
    one more with a shape prior's map (B, S, S) (`model.shape_prior`).

    reconstruction: (B, 3, S, S) normalised image; map_2d, map_3d: the paper's normalised raw
    maps (B, S, S), log-compressed here (a defect can be hundreds of times a typical good
    pixel). Geometry: the surface normals (pose-independent local shape) and the normalised
    points, zero on the background.
    """
    valid = inp.valid.to(inp.images.dtype)
    normals = surface_normals(metric_xyz(inp), inp.valid) * valid[..., None]
    channels = [inp.images, reconstruction.to(inp.images.dtype), torch.log1p(map_2d)[:, None],
                torch.log1p(map_3d)[:, None], valid[:, None], normals.permute(0, 3, 1, 2),
                inp.xyz.permute(0, 3, 1, 2)]
    if shape_map is not None:
        channels.append(shape_map[:, None].to(inp.images.dtype))
    return torch.cat(channels, dim=1)


def _conv(in_dim: int, out_dim: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_dim, out_dim, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_dim), nn.ReLU(inplace=True))


class ScoringHead(nn.Module):
    """(B, in_dim, S, S) pixels and (B, context_dim, g, g) token context -> anomaly logits
    (B, S, S).

    Encoder: the inputs normalised per channel, a stride-2 convolution to S/2, then one level per
    further width, each halving the resolution; the token context (the network's decoder
    features on its patch grid) is projected and added at the coarsest level, so every pixel
    knows what the network expects around it; decoder: upsample, concatenate the skip, two
    convolutions; 1x1 to one channel at S/2, bilinear to S. Any S: each level upsamples to its
    skip's size.
    """

    def __init__(self, widths: Sequence[int] = (16, 32, 64, 128), in_dim: int = NUM_INPUTS,
                 context_dim: int = 0):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(in_dim)
        self.stem = nn.Sequential(_conv(in_dim, widths[0], stride=2), _conv(widths[0], widths[0]))
        self.down = nn.ModuleList(nn.Sequential(_conv(a, b), _conv(b, b))
                                  for a, b in zip(widths[:-1], widths[1:]))
        self.context = nn.Sequential(nn.Conv2d(context_dim, widths[-1], 1, bias=False),
                                     nn.BatchNorm2d(widths[-1])) if context_dim else None
        self.up = nn.ModuleList(nn.Sequential(_conv(a + b, a), _conv(a, a))
                                for a, b in zip(widths[:-1], widths[1:]))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor = None) -> torch.Tensor:
        size = x.shape[-2:]
        if x.device.type == 'cpu':
            # oneDNN's convolutions, forward and backward, run faster on channels-last pixels;
            # the same logits up to rounding.
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.input_norm(x)
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(F.max_pool2d(skips[-1], 2)))
        y = skips.pop()
        if self.context is not None:
            y = torch.relu(y + F.interpolate(self.context(context), size=y.shape[-2:],
                                             mode='bilinear', align_corners=False))
        for block in reversed(self.up):
            skip = skips.pop()
            y = block(torch.cat([F.interpolate(y, size=skip.shape[-2:], mode='bilinear',
                                               align_corners=False), skip], dim=1))
        logits = F.interpolate(self.out(y), size=size, mode='bilinear', align_corners=False)
        return logits[:, 0]


def build_scoring_head(cfg: DBMRConfig, shape_prior: bool) -> ScoringHead:
    """A fresh scoring head for `cfg`: its widths, the inputs it reads with or
    without a `shape_prior` channel, and the network's decoder features as token context."""
    channels = input_channels(shape_prior)
    return ScoringHead(cfg.head_widths, sum(n for _, n in channels),
                       context_dim=2 * cfg.decoder_dim)


def token_context(features_2d: torch.Tensor, features_3d: torch.Tensor, groups: Groups,
                  image_size: int) -> torch.Tensor:
    """(B, 2 * Dd, g, g): each patch's 2D decoder feature, and the 3D decoder feature of the
    point group whose centre lies nearest to the patch centre in the image."""
    batch, length, dim = features_2d.shape
    grid = int(round(length ** 0.5))
    step = image_size / grid
    centres = (torch.arange(grid, device=features_2d.device, dtype=torch.float32) + 0.5) * step
    rows, cols = torch.meshgrid(centres, centres, indexing='ij')
    patches = torch.stack([rows.flatten(), cols.flatten()], -1)                   # (L, 2)
    group_pixels = torch.stack([groups.center_pixels // image_size,
                                groups.center_pixels % image_size], -1).float()   # (B, G, 2)
    nearest = torch.cdist(patches.expand(batch, -1, -1), group_pixels).argmin(-1)  # (B, L)
    per_patch_3d = gather(features_3d, nearest)                                  # (B, L, D)
    both = torch.cat([features_2d, per_patch_3d.to(features_2d.dtype)], dim=-1)    # (B, L, 2D)
    return both.transpose(1, 2).reshape(batch, 2 * dim, grid, grid)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0,
               min_share: float = 1e-3) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017) of logits (B, ...) against a {0, 1} target, summed
    and divided by the number of anomalous pixels, as RetinaNet does.

    Confident pixels count little, and the normalisation keeps the few anomalous pixels (a
    defect is often under 1 % of the image) from being drowned out: averaged over all pixels,
    predicting 'normal' everywhere costs almost nothing and the head learns exactly that. The
    divisor is at least `min_share` of the pixels, so a batch with one tiny anomaly does not
    get a hundredfold weight.
    """
    target = target.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction='none')
    focal = (1 - torch.exp(-bce)) ** gamma * bce
    divisor = target.sum().clamp_min(min_share * target.numel())
    return focal.sum() / divisor
