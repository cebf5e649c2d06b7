"""Token scores and reconstructions -> pixel anomaly maps.

Two scorings, both returned so that every user sees what each part contributes:

- 'paper': the DBMRNet paper's maps. 2D per pixel (the reconstruction error), 3D per point
  group splatted onto the pixels of the group's points; each normalised by its mean on good
  foreground, fused by product, smoothed; background pixels zero.
- 'learned': the scoring head's per-pixel anomaly probability, smoothed, on the part and a
  margin around it (`map_margin`).

Either way the image score is the maximum of the (smoothed) map: the map averaged over a
Gaussian window of `smoothing_sigma` pixels at the model's resolution, then its peak.
"""
from typing import NamedTuple, Optional

import torch

from dbmr_ros.model.dbmrnet import DBMRNet, TokenScores
from dbmr_ros.model.grid import dilate, gaussian_blur
from dbmr_ros.model.head import head_inputs, token_context
from dbmr_ros.model.inputs import Groups, metric_xyz, ModelInput
from dbmr_ros.model.pixels import group_map

SCORINGS = ('learned', 'paper')


class AnomalyMaps(NamedTuple):
    anomaly_map: torch.Tensor  # (B, S, S) the map of the scoring in use
    score: torch.Tensor        # (B,) its image score (max of `anomaly_map`)
    paper_map: torch.Tensor    # (B, S, S) the paper's map (its 2D and 3D maps' product)
    paper_score: torch.Tensor  # (B,)
    map_2d: torch.Tensor       # (B, S, S) the paper's RGB-only map
    map_3d: torch.Tensor       # (B, S, S) the paper's geometry-only map


def raw_maps(tokens: TokenScores, inp: ModelInput, groups: Groups):
    """Unnormalised (B, S, S) 2D and 3D maps, zero on the background.

    2D: the squared reconstruction error summed over the colour channels, at pixel
    resolution. 3D: the per-group decoder feature distance, splatted onto the pixels of the
    group's points.
    """
    map_2d = ((inp.images - tokens.reconstruction.to(inp.images.dtype)) ** 2).sum(1)
    return map_2d * inp.valid, group_map(tokens.group, inp, groups)


def normalised(raw_2d: torch.Tensor, raw_3d: torch.Tensor, stats: Optional[dict]):
    """Each raw map divided by its mean on good validation foreground (`stats` 'mean_2d',
    'mean_3d'; 1 when absent), so 1 is a typical good pixel."""
    stats = stats or {}
    return raw_2d / stats.get('mean_2d', 1.0), raw_3d / stats.get('mean_3d', 1.0)


def paper_maps(map_2d: torch.Tensor, map_3d: torch.Tensor, valid: torch.Tensor, sigma: float):
    """Normalised (B, S, S) maps -> the paper's (map, map_2d, map_3d): product, each smoothed,
    background re-zeroed."""
    stacked = torch.stack([map_2d * map_3d, map_2d, map_3d])                 # (3, B, S, S)
    smoothed = gaussian_blur(stacked.flatten(0, 1), sigma).view_as(stacked)
    return tuple((smoothed * valid.to(smoothed.dtype)).unbind(0))


def learned_map(logits: torch.Tensor, valid: torch.Tensor, sigma: float,
                margin: int) -> torch.Tensor:
    """Scoring head logits (B, S, S) -> smoothed anomaly probability (B, S, S), zero farther
    than `margin` pixels from the part."""
    near = dilate(valid, margin).to(torch.float32)
    return gaussian_blur(torch.sigmoid(logits.float()) * near, sigma) * near


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """(B, S, S) -> (B,) the image score: the peak of the map."""
    return maps.flatten(1).amax(1)


class HeadFeatures(NamedTuple):
    inputs: torch.Tensor   # (B, C, S, S) what the scoring head reads per pixel
    context: torch.Tensor  # (B, 2 * Dd, g, g) and per patch (the network's features)
    map_2d: torch.Tensor   # (B, S, S) the paper's normalised raw 2D map
    map_3d: torch.Tensor   # (B, S, S) the paper's normalised raw 3D map
    shape_map: Optional[torch.Tensor]  # (B, S, S) the shape prior's map; None without one


@torch.no_grad()
def shape_prior_map(model: DBMRNet, inp: ModelInput,
                    parts: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
    """The shape prior's (B, S, S) map of the input cloud; None for a model without one. It
    reads the cloud alone, so it can run beside the network (`cuda_graphs.run_beside`).
    `parts` (B,): the training part of each sample, while the head trains (`ShapePrior`)."""
    if model.shape_prior is None:
        return None
    return model.shape_prior(metric_xyz(inp), inp.valid, parts)


@torch.no_grad()
def head_features(model: DBMRNet, inp: ModelInput, groups: Groups, tokens: TokenScores,
                  stats: Optional[dict],
                  shape_map: Optional[torch.Tensor] = None) -> HeadFeatures:
    """The paper's normalised maps and the head's inputs from `model.score_tokens` (shared by
    training the head and by inference, so the head always reads what it was trained on).
    `shape_map`: `shape_prior_map`'s result where the caller computed it already."""
    map_2d, map_3d = normalised(*raw_maps(tokens, inp, groups), stats)
    if shape_map is None:
        shape_map = shape_prior_map(model, inp)
    inputs = head_inputs(inp, tokens.reconstruction, map_2d, map_3d, shape_map)
    context = token_context(tokens.features_2d, tokens.features_3d, groups,
                            model.cfg.image_size)
    return HeadFeatures(inputs, context, map_2d, map_3d, shape_map)


@torch.no_grad()
def anomaly_maps(model: DBMRNet, inp: ModelInput, groups: Groups, tokens: TokenScores,
                 stats: Optional[dict], scoring: str = 'learned',
                 shape_map: Optional[torch.Tensor] = None) -> AnomalyMaps:
    """Both scorings' maps (B, S, S) and image scores from `model.score_tokens`; `anomaly_map` is
    `scoring`'s (`shape_map` as in `head_features`)."""
    if scoring not in SCORINGS:
        raise ValueError(f'scoring must be one of {SCORINGS}, got {scoring!r}')
    sigma = model.cfg.smoothing_sigma
    if scoring == 'learned':
        features = head_features(model, inp, groups, tokens, stats, shape_map)
        map_2d, map_3d = features.map_2d, features.map_3d
    else:  # the head's inputs are not needed
        map_2d, map_3d = normalised(*raw_maps(tokens, inp, groups), stats)
    paper_map, paper_2d, paper_3d = paper_maps(map_2d, map_3d, inp.valid, sigma)
    anomaly_map = paper_map
    if scoring == 'learned':
        logits = model.scoring_head(features.inputs, features.context)
        anomaly_map = learned_map(logits, inp.valid, sigma, model.cfg.map_margin)
    return AnomalyMaps(anomaly_map, image_scores(anomaly_map), paper_map,
                       image_scores(paper_map), paper_2d, paper_3d)
