"""Fitting the shape prior (`model.shape_prior`) on the training parts, before either stage.

Every patch of every training sample counts, the background's too: its descriptor is zero, so
one coreset entry takes it and the empty table scores as good. A
patch that loses some of its points to a hole or a cut averages its histograms with zeros and
scores as unusual; one that loses all of them looks like background here (the head's validity
channel sees it). The coreset is a greedy k-centre subsample (deterministic), copied into the
model's buffers, so inference needs torch only.
"""
import numpy as np
import torch

from dbmr_ros.data.anomalies import NONE, RGB
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.model.inputs import metric_xyz, ModelInput
from dbmr_ros.model.local_shape import patch_descriptors
from dbmr_ros.model.shape_prior import ShapePrior


@torch.no_grad()
def training_descriptors(xyz: np.ndarray, patch_size: int, device, batch_size: int = 16,
                         **descriptor) -> np.ndarray:
    """(N, S, S, 3) model-size clouds (metres) -> (N * g * g, 33) patch descriptors
    (`descriptor`: `stride`, `radius`, `neighbours` of `local_shape.patch_descriptors`)."""
    out = []
    for start in range(0, len(xyz), batch_size):
        clouds = torch.from_numpy(xyz[start:start + batch_size]).to(device).float()
        descriptors = patch_descriptors(clouds, valid_mask(clouds), patch_size, **descriptor)
        out.append(descriptors.permute(0, 2, 3, 1).flatten(0, 2).cpu().numpy())
    return np.concatenate(out)


def descriptor_settings(prior: ShapePrior) -> dict:
    """The prior's keyword arguments of `local_shape.patch_descriptors` beyond the patch."""
    return {'stride': prior.stride, 'radius': prior.radius, 'neighbours': prior.neighbours}


def fit_shape_prior(prior: ShapePrior, xyz: np.ndarray, device) -> dict:
    """Fit `prior` (in place) on training clouds (N, S, S, 3); returns a summary for the log."""
    descriptors = training_descriptors(xyz, prior.patch_size, device,
                                       **descriptor_settings(prior))
    return fit_coreset(prior, descriptors, len(xyz))


def greedy_coreset(points: torch.Tensor, size: int) -> torch.Tensor:
    """(N, D) -> (n <= size,) indices of PatchCore's greedy k-centre subsample: each next point
    the one farthest from those chosen, starting from the first; fewer than `size` where fewer
    points are distinct. A prefix of the answer is the answer for a smaller size."""
    chosen = [0]
    nearest = torch.cdist(points, points[:1])[:, 0]
    for _ in range(min(size, len(points)) - 1):
        if not nearest.max() > 0:
            break
        chosen.append(int(nearest.argmax()))
        nearest = torch.minimum(nearest, torch.cdist(points, points[chosen[-1]][None])[:, 0])
    return torch.tensor(chosen)


@torch.no_grad()
def fit_coreset(prior: ShapePrior, descriptors: np.ndarray, parts: int) -> dict:
    """The coreset of `descriptors` (parts * g * g, D), sample-major, into `prior`: the
    background's zero descriptor first, then the greedy k-centre choice among the part's
    patches; its distances standardised on the training parts' patches, each part's scored
    without its own entries (as the head's training scores them: `ShapePrior.forward`)."""
    points = torch.from_numpy(descriptors).float()
    part_of = torch.arange(parts).repeat_interleave(len(points) // parts)
    on_part = points.abs().sum(1) > 0
    candidates = torch.cat([torch.zeros(1, points.shape[1]), points[on_part]])
    candidate_parts = torch.cat([torch.tensor([-1]), part_of[on_part]])
    chosen = greedy_coreset(candidates, len(prior.bank))
    # Fewer distinct patches than entries (a small training set): the rest repeat the
    # background's entry, which changes no distance.
    chosen = torch.cat([chosen, chosen.new_zeros(len(prior.bank) - len(chosen))])
    prior.bank.copy_(candidates[chosen])
    prior.bank_parts.copy_(candidate_parts[chosen])
    good, good_parts = points[on_part][:, None], part_of[on_part]       # one patch per row
    distances = torch.cat([prior.nearest(good[start:start + 4096],
                                         good_parts[start:start + 4096])[:, 0]
                           for start in range(0, len(good), 4096)])
    centre, spread = standardise(prior, distances.numpy())
    return {'patches': len(points), 'on_part': int(on_part.sum()),
            'entries': int((chosen > 0).sum()) + 1,
            'distance_median': centre, 'distance_iqr': spread}


@torch.no_grad()
def standardise(prior: ShapePrior, raw: np.ndarray):
    """Centre and spread of `prior`'s score from its raw scores (N,) on the training parts'
    patches: median and interquartile range, set and returned."""
    low, centre, high = np.quantile(raw, [0.25, 0.5, 0.75])
    prior.nll_centre.fill_(float(centre))
    prior.nll_spread.fill_(float(max(high - low, 1e-3)))
    return float(centre), float(high - low)


class PriorMaps:
    """The shape prior's maps in the head stage, remembered per training part and pose while the
    part's geometry is unchanged.

    The prior reads the cloud alone, and a sample that drew no anomaly or a colour-only one has
    its part's cloud in the batch's flip and rotation: its scores are the same each time that
    part comes back in that pose (the descriptors and the nearest entries do not depend on the
    rest of the batch), so they are computed once; about two samples in three keep their
    geometry. On the CPU only: there the prior costs per sample; a GPU's cost follows the
    kernels launched, and the bookkeeping would read the batch's kinds back at every step."""

    def __init__(self, prior: ShapePrior):
        self.prior = prior
        self.scores = {}   # (part, pose) -> (g, g) patch scores

    @torch.no_grad()
    def __call__(self, inp: ModelInput, parts: torch.Tensor, kind: torch.Tensor,
                 pose: tuple) -> torch.Tensor:
        """A head-stage batch (`engine.TrainBatch`: its input, kinds and pose; `parts` (B,) the
        training part of each sample) -> (B, S, S) `scoring.shape_prior_map(model, inp, parts)`,
        bit for bit."""
        xyz, size = metric_xyz(inp), inp.valid.shape[1]
        if xyz.device.type != 'cpu':
            return self.prior(xyz, inp.valid, parts)
        keys = [(part, pose) for part in parts.tolist()]
        kept = [k in (NONE, RGB) for k in kind.tolist()]
        todo = [i for i, key in enumerate(keys) if not (kept[i] and key in self.scores)]
        scores = [self.scores.get(key) for key in keys]
        if todo:
            rows = torch.tensor(todo)
            for i, fresh in zip(todo, self.prior.patch_scores(xyz[rows], inp.valid[rows],
                                                              parts[rows])):
                scores[i] = fresh
                if kept[i]:
                    self.scores[keys[i]] = fresh.clone()
        return self.prior.to_pixels(torch.stack(scores), size)
