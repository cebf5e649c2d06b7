"""Between points and pixels: per-group and per-point values onto the image grid of an
organized cloud, for the valid pixels only (a part fills ~15 % of the image)."""
from typing import NamedTuple

import torch

from dbmr_ros.cuda_graphs import capturing
from dbmr_ros.model.inputs import Groups, ModelInput
from dbmr_ros.model.point_ops import gather


class ValidPixels(NamedTuple):
    """Each sample's valid pixels in raster order, padded to the batch's largest count (a part
    fills ~15 % of the image, so per-pixel work is done on these only)."""
    index: torch.Tensor    # (B, V) long flat pixel index
    points: torch.Tensor   # (B, V, 3) the pixels' (normalised) points
    present: torch.Tensor  # (B, V) bool, False on padding


def valid_pixels(inp: ModelInput) -> ValidPixels:
    batch, size = inp.valid.shape[0], inp.valid.shape[1]
    valid = inp.valid.reshape(batch, size * size)
    # While a CUDA graph is recorded the width may not depend on the data: every pixel then,
    # the same maps at a little more work (the padding is masked by `present`).
    count = size * size if capturing() else int(valid.sum(1).max())
    index = valid.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :count]
    points = gather(inp.xyz.reshape(batch, size * size, 3), index)
    return ValidPixels(index, points, torch.gather(valid, 1, index))


def _scatter(values: torch.Tensor, pixels: ValidPixels, size: int) -> torch.Tensor:
    """(B, V) per valid pixel -> (B, S, S), zero elsewhere."""
    values = values * pixels.present
    out = torch.zeros(values.shape[0], size * size, dtype=values.dtype, device=values.device)
    return out.scatter_(1, pixels.index, values).view(-1, size, size)


def group_map(group_scores: torch.Tensor, inp: ModelInput, groups: Groups) -> torch.Tensor:
    """(B, G) -> (B, S, S): each valid pixel takes the score of the group whose centre is nearest
    to its 3D point (the group it belongs to under kNN, extended to every point)."""
    pixels = valid_pixels(inp)
    nearest = torch.cdist(pixels.points, groups.centers).argmin(-1)         # (B, V)
    return _scatter(torch.gather(group_scores, 1, nearest), pixels, inp.valid.shape[1])
