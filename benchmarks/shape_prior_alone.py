"""The shape prior's map on its own, on the selection set (validation/good + synthetic anomalies).

Fits the prior as `dbmr-train` does (`training.shape_prior`, all training parts), then scores
the good validation samples and `--copies` synthetic anomalies on each (the training's
selection set: seed 1) with the prior's map alone (`--kind`: the mixture's or the coreset's):
its standardised score per patch, bilinear to pixels, smoothed by sigma 4 px, image score its
maximum. `--patchcore` adds the same descriptors scored as PatchCore does (nearest-neighbour
distance to an uncapped 10 % greedy coreset of all training patches); `--btf` adds the classic
baseline's own map (`baseline_fpfh_patchcore.py`: per-point FPFH over the 100 nearest points,
its pooling and its 10 % coreset), so that the selection set can say whether our grid
descriptors or the baseline's see synthetic defects better. `--unseen-copies N` scores every
map on the second selection set too (N of each defect kind that training never draws on every
validation sample: seed 2, as dbmr-train). Per kind of synthetic defect, each against all good
samples; first, the prior's patch scores on the training parts it was fitted on against the
unseen validation parts; last, what the descriptors cost per frame. Test samples never enter.

`--fit-on-part` fits the mixture's components on the part's patches only and adds the
background (the empty table's zero descriptor, about 80 % of the patches) as one fixed
component, instead of letting EM spend its passes over the background: the same model in
intent, a fraction of the fitting time, so that `--components` can be raised.

    .venv/bin/python benchmarks/shape_prior_alone.py --data-root ../shared/data/mvtec3d \\
        --category cable_gland [--kind mixture|coreset] [--components N] [--patchcore] \\
        [--btf] [--unseen-copies 1] [--fit-on-part] [--patch-size 4]
"""
import argparse
import dataclasses
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from sklearn.mixture import GaussianMixture

from baseline_fpfh_patchcore import coreset, patch_features, PATCH_GRID
from dbmr_ros.data.anomalies import AnomalyConfig, anomalous_copies, KIND_NAMES
from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess import PreprocessCache, PreprocessConfig
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.data.unseen_defects import unseen_copies
from dbmr_ros.model import PRESETS
from dbmr_ros.model.grid import gaussian_blur
from dbmr_ros.model.local_shape import patch_descriptors
from dbmr_ros.model.shape_prior import build_shape_prior, MixturePrior, SHAPE_PRIOR_KINDS
from dbmr_ros.report import CategoryResults
from dbmr_ros.training.shape_prior import (descriptor_settings, fit_shape_prior, load_mixture,
                                           REGULARISATION, training_descriptors)

METRICS = ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1')


def fit_on_part(prior: MixturePrior, xyz: np.ndarray, seed: int, device) -> dict:
    """`fit_shape_prior` with all but one component fitted on the part's patches, the last one
    the background's: mean zero, the covariance EM reaches for identical zeros (its
    regularisation alone), weight the background's share of the patches."""
    descriptors = training_descriptors(xyz, prior.patch_size, device,
                                       **descriptor_settings(prior)).astype(np.float64)
    part = np.abs(descriptors).sum(1) > 0
    mixture = GaussianMixture(len(prior.log_weights) - 1, covariance_type='full',
                              reg_covar=REGULARISATION, max_iter=200,
                              random_state=seed).fit(descriptors[part])
    dim, share = descriptors.shape[1], part.mean()
    load_mixture(prior, np.concatenate([mixture.means_, np.zeros((1, dim))]),
                 np.concatenate([mixture.precisions_cholesky_,
                                 np.eye(dim)[None] / math.sqrt(REGULARISATION)]),
                 np.concatenate([mixture.weights_ * share, [1 - share]]), descriptors[part])
    return {'patches': len(descriptors), 'on_part': int(part.sum()),
            'converged': bool(mixture.converged_), 'iterations': int(mixture.n_iter_)}


def pixel_maps(patch_scores: np.ndarray, size: int, sigma: float = 4.0) -> np.ndarray:
    """(N, g, g) -> (N, S, S): bilinear, then the maps' Gaussian smoothing."""
    maps = F.interpolate(torch.from_numpy(patch_scores).float()[:, None], size=(size, size),
                         mode='bilinear', align_corners=False)[:, 0]
    return gaussian_blur(maps, sigma).numpy()


def evaluate(name, good_maps, bad_maps, masks, kinds, log=print):
    """One row per kind of defect (names, or the synthesizer's kind numbers) and one of all."""
    results = CategoryResults()
    names = [kind if isinstance(kind, str) else KIND_NAMES[kind] for kind in kinds]
    for label, maps, gts, names in ((0, good_maps, np.zeros(good_maps.shape, bool),
                                     [''] * len(good_maps)),
                                    (1, bad_maps, masks, names)):
        for anomaly_map, gt, kind in zip(maps, gts, names):
            results.add(label, gt, anomaly_map, None, None, float(anomaly_map.max()), kind=kind)
    rows = [('all', results.compute())] + list(results.compute_by_kind().items())
    for kind, values in rows:
        log(f'| {name} | {kind} | ' + ' | '.join(f'{values[k]:.3f}' for k in METRICS) + ' |')


def descriptor_milliseconds(xyz: np.ndarray, patch: int, descriptor: dict) -> float:
    """Median wall time of `patch_descriptors` for one model-size cloud at a time, as the
    Detector computes them per frame (the first call, which warms up, not counted)."""
    times = []
    for cloud in np.concatenate([xyz[:1], xyz]):
        cloud = torch.from_numpy(cloud[None]).float()
        start = time.perf_counter()
        with torch.no_grad():
            patch_descriptors(cloud, valid_mask(cloud), patch, **descriptor)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times[1:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--category', default='cable_gland')
    parser.add_argument('--copies', type=int, default=2)
    parser.add_argument('--kind', choices=SHAPE_PRIOR_KINDS, default='mixture')
    parser.add_argument('--components', type=int, default=None,
                        help='entries of the prior (default: 32 for a mixture, 2048 for a '
                             'coreset)')
    parser.add_argument('--patchcore', action='store_true')
    parser.add_argument('--btf', action='store_true',
                        help="the classic baseline's map (its FPFH, pooling and coreset)")
    parser.add_argument('--unseen-copies', type=int, default=0,
                        help='of each defect kind training never draws, on every sample')
    parser.add_argument('--patch-size', type=int, default=None,
                        help='pixels per descriptor patch (default: the preset\'s, 8 at 224)')
    parser.add_argument('--stride', type=int, default=2,
                        help='descriptors on every STRIDE-th pixel (local_shape)')
    parser.add_argument('--radius', type=int, default=2,
                        help='FPFH over the (2 RADIUS + 1)^2 window of those pixels')
    parser.add_argument('--neighbours', type=int, default=0,
                        help="only the window's nearest N points in space (0: all)")
    parser.add_argument('--fit-on-part', action='store_true',
                        help="components on the part's patches, the background as one more")
    args = parser.parse_args(argv)
    if args.fit_on_part and args.kind != 'mixture':
        parser.error('--fit-on-part fits a mixture')
    components = args.components or {'mixture': 32, 'coreset': 2048}[args.kind]
    cfg = dataclasses.replace(PRESETS['tiny'], shape_prior_components=components,
                              shape_prior_kind=args.kind)
    patch = args.patch_size or cfg.shape_patch_size
    if patch % args.stride or cfg.image_size % patch:   # whole patches of descriptors
        parser.error(f'--patch-size must be a multiple of --stride and divide {cfg.image_size}')
    descriptor = {'stride': args.stride, 'radius': args.radius, 'neighbours': args.neighbours}
    pcfg = PreprocessConfig(image_size=cfg.image_size)
    cache = PreprocessCache(pcfg)
    started = time.perf_counter()
    train = load_split(args.dataset, args.data_root, args.category, 'train', pcfg, cache)
    val = load_split(args.dataset, args.data_root, args.category, 'validation', pcfg, cache)
    _, bad_xyz, masks, kinds = anomalous_copies(*val, AnomalyConfig(), seed=1,
                                                copies=args.copies)
    prior = build_shape_prior(cfg.shape_prior_kind, components, patch, **descriptor)
    summary = (fit_on_part if args.fit_on_part else fit_shape_prior)(prior, train[1], seed=0,
                                                                     device='cpu')
    print(f'prior fitted in {time.perf_counter() - started:.0f} s: {summary}', flush=True)

    def prior_maps(xyz):
        maps = []
        for start in range(0, len(xyz), 16):
            clouds = torch.from_numpy(xyz[start:start + 16]).float()
            with torch.no_grad():
                maps.append(pixel_maps(prior.patch_scores(clouds, valid_mask(clouds)).numpy(),
                                       cfg.image_size))
        return np.concatenate(maps)

    # The head trains on the very parts the prior was fitted on: how much calmer is the
    # prior there (as the head's training scores them) than on unseen good parts?
    for split, (_, xyz) in (('train', train), ('validation', val)):
        scores, on_part = [], []
        for start in range(0, len(xyz), 16):
            clouds = torch.from_numpy(xyz[start:start + 16]).float()
            parts = torch.arange(start, start + len(clouds)) if split == 'train' else None
            with torch.no_grad():
                scores.append(prior.patch_scores(clouds, valid_mask(clouds), parts))
                on_part.append(patch_descriptors(clouds, valid_mask(clouds), patch,
                                                 **descriptor).abs().sum(1) > 0)
        scores, on_part = torch.cat(scores), torch.cat(on_part)
        values = scores[on_part].numpy()
        print(f'{split} good parts, patch scores on the part: quantiles 50/90/99/99.9 % '
              + ' / '.join(f'{v:.2f}' for v in np.quantile(values, [0.5, 0.9, 0.99, 0.999]))
              + f'; median per-image maximum {np.median(scores.flatten(1).amax(1).numpy()):.2f}')
    maps = {'shape prior': prior_maps}
    if args.patchcore:
        grid = cfg.image_size // patch
        bank = coreset(torch.from_numpy(training_descriptors(train[1], patch, 'cpu',
                                                             **descriptor)))

        def patchcore_maps(xyz):
            patches = torch.from_numpy(training_descriptors(xyz, patch, 'cpu', **descriptor))
            distances = torch.cdist(patches, bank).min(1).values
            return pixel_maps(distances.view(-1, grid, grid).numpy(), cfg.image_size)

        maps['PatchCore, same descriptors'] = patchcore_maps
    if args.btf:
        btf_bank = coreset(torch.cat([patch_features(xyz) for xyz in train[1]]))
        print(f'baseline bank: {len(btf_bank)} patches '
              f'({time.perf_counter() - started:.0f} s)', flush=True)

        def btf_maps(xyz):
            distances = torch.stack([torch.cdist(patch_features(cloud), btf_bank).amin(1)
                                     for cloud in xyz])
            return pixel_maps(distances.view(-1, PATCH_GRID, PATCH_GRID).numpy(),
                              cfg.image_size)

        maps['classic baseline (FPFH + PatchCore)'] = btf_maps
    sets = [('training kinds', bad_xyz, masks, kinds)]
    if args.unseen_copies:
        _, unseen_xyz, unseen_masks, unseen_kinds = unseen_copies(*val, seed=2,
                                                                  copies=args.unseen_copies)
        sets.append(('unseen kinds', unseen_xyz, unseen_masks, unseen_kinds))
    print('| map | synthetic kind | ' + ' | '.join(METRICS) + ' |\n|---|---|---|---|---|---|')
    for name, score_maps in maps.items():
        good = score_maps(val[1])
        for label, xyz, set_masks, set_kinds in sets:
            evaluate(name if label == 'training kinds' else f'{name}, {label}', good,
                     score_maps(xyz), set_masks, set_kinds)
    print(f'descriptors of one frame (batch 1, the {len(val[1])} validation clouds): median '
          f'{descriptor_milliseconds(val[1], patch, descriptor):.1f} ms on '
          f'{torch.get_num_threads()} threads')
    print(f'{time.perf_counter() - started:.0f} s in all')
    return 0


if __name__ == '__main__':
    sys.exit(main())
