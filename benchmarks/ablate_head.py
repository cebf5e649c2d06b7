"""Scoring-head training choices, judged on the selection set only (validation/good plus
synthetic anomalies on it; never test samples): the figures behind docs/design_notes.md.

The network of a trained checkpoint stays frozen; for each variant a fresh scoring head (the
same initial weights every time) is trained for `--head-epochs` on the training split as
dbmr-train's stage 2 does, and scored on the validation samples with `--copies` synthetic
anomalies on each (more copies than training's 2: the differences looked for are a few points;
the selection set's synthetic defects are the training config's, whatever a variant trains on).
Besides the pooled figures, AUPRO@0.3 per kind of synthetic defect (against all good samples),
and the learned map on the second selection set (one of each defect kind that training never
draws on every validation sample, `data/unseen_defects.py`), pooled and per kind.

    .venv/bin/python benchmarks/ablate_head.py CHECKPOINT --data-root ../shared/data/mvtec3d \
        --category cable_gland [--head-epochs 50 --copies 6] [--variants default more-3d]

With several `--seeds`, each variant trains one head per seed (a row each), and with
`--ensemble` one more row scores the mean of those heads' logits: whether heads that differ
only by their seed make errors that averaging removes.
"""
import argparse
import copy
import dataclasses
import math
import sys
import time

import torch
from torch import nn

from dbmr_ros.data.anomalies import KIND_NAMES
from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.unseen_defects import KINDS as UNSEEN_KINDS
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.model.head import build_scoring_head
from dbmr_ros.model.shape_prior import build_shape_prior
from dbmr_ros.resources import share_dir
from dbmr_ros.train import build_optimizers, evaluate_and_calibrate, stage_network
from dbmr_ros.training import engine
from dbmr_ros.training.config import TrainConfig
from dbmr_ros.training.shape_prior import fit_shape_prior

# Per variant: its row label and its training config overrides ('model': of the frozen
# network's DBMRConfig, for settings that change what the head reads; 'shape_prior': entries
# of a coreset prior fitted afresh on the training parts, as dbmr-train fits it, over patches
# of 'shape_prior_patch' pixels where given, over the window of the variant's DBMRConfig).
VARIANTS = {
    'default': ('focal loss, each anomalous pixel alike (default)', {}),
    'per-defect': ('focal loss, each defect alike', {'head_loss_per_defect': True}),
    'more-3d': ('twice as many 3D-only synthetic defects in training',
                {'anomalies': {'modality_weights': (1.0, 2.0, 1.0)}}),
    'smooth-normals': ('normals of the cloud smoothed by 1.5 px',
                       {'model': {'normal_smoothing': 1.5}}),
    'coreset-4096': ('the coreset shape prior with 4096 entries', {'shape_prior': 4096}),
    'coreset-fine': ('the coreset shape prior over 4 px patches instead of 8',
                     {'shape_prior': 2048, 'shape_prior_patch': 4}),
    'coreset-r3': ('the coreset shape prior, FPFH over 7 x 7 windows instead of 5 x 5',
                   {'shape_prior': 2048, 'model': {'shape_prior_radius': 3}}),
    'strokes': ('a third of the synthetic defects thin strokes instead of blobs',
                {'anomalies': {'stroke_share': 0.33}}),
    'strokes-10': ('a tenth of the synthetic defects thin strokes instead of blobs',
                   {'anomalies': {'stroke_share': 0.1}}),
    'rough': ('half of the displaced regions rough (height varying across them) instead of '
              'uniform', {'anomalies': {'rough_share': 0.5}}),
    'rough-20': ('a fifth of the displaced regions rough instead of uniform',
                 {'anomalies': {'rough_share': 0.2}}),
    'relief': ('half of the displaced regions with the fine relief of another place of the '
               'part instead of a plateau', {'anomalies': {'relief_share': 0.5}}),
    'relief-20': ('a fifth of the displaced regions with foreign relief instead of a plateau',
                  {'anomalies': {'relief_share': 0.2}}),
    'gamma-1': ('focal loss with exponent 1 instead of 2', {'head_focal_gamma': 1.0}),
    'bce': ('cross-entropy (focal exponent 0) instead of the focal loss',
            {'head_focal_gamma': 0.0}),
    'image-loss': ("the focal loss plus the image score's cross-entropy",
                   {'head_image_loss': 1.0}),
    'no-points': ("the head without the normalised points (pose-free per-pixel inputs)",
                  {'model': {'head_points': False}}),
    'image-loss-0.25': ("the focal loss plus a quarter of the image score's cross-entropy",
                        {'head_image_loss': 0.25}),
}
KINDS = KIND_NAMES[1:]


class MeanOfHeads(nn.Module):
    """Scoring heads -> the mean of their logits (B, S, S), called as one head is."""

    def __init__(self, heads):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor = None) -> torch.Tensor:
        return torch.stack([head(x, context) for head in self.heads]).mean(0)


def train_head(model, meta, data, cfg: TrainConfig, seed: int) -> float:
    """A fresh head on the frozen network, trained in place (built anew where the variant
    changes how many inputs it reads); returns the minutes taken."""
    fresh = build_scoring_head(model.cfg, model.shape_prior is not None)
    if fresh.input_norm.num_features != model.scoring_head.input_norm.num_features:
        model.scoring_head = fresh
    torch.manual_seed(seed)
    for module in model.scoring_head.modules():  # torch's initialisation, as when built
        if hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    steps_per_epoch = math.ceil(len(data[0]) / cfg.batch_size)
    optimizers, schedulers = build_optimizers(model, cfg, steps_per_epoch)
    head = stage_network(model, True, 1)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    for _ in range(cfg.head_epochs):
        order = torch.randperm(len(data[0]), generator=generator)
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        engine.head_epoch(head, model, data, batches, optimizers[1], schedulers[1], cfg,
                          meta.calibration.stats, generator, 'cpu', '', False)
    return (time.perf_counter() - started) / 60


def score(model, meta, val, cfg: TrainConfig) -> dict:
    """Both selection sets' figures of the model as it is now (`evaluate_and_calibrate`)."""
    _, selection = evaluate_and_calibrate(model, meta, 'cpu', val, cfg, unseen_copies=1)
    print(selection, file=sys.stderr, flush=True)
    return selection


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--category', required=True)
    parser.add_argument('--config', help='training config (default: train_tiny.yaml)')
    parser.add_argument('--head-epochs', type=int, default=50)
    parser.add_argument('--copies', type=int, default=6,
                        help='synthetic anomalies per validation sample')
    parser.add_argument('--seeds', type=int, nargs='+', default=[1],
                        help="each variant's head seeds, one head (and row) per seed")
    parser.add_argument('--ensemble', action='store_true',
                        help="with several seeds, also score the mean of their heads' logits")
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    detector = Detector.from_checkpoint(args.checkpoint, 'cpu')
    model, meta = detector.model, detector.meta
    cfg = TrainConfig.load(args.config or share_dir() / 'config' / 'train_tiny.yaml')
    cfg.head_epochs, cfg.calibration_copies = args.head_epochs, args.copies
    cache = PreprocessCache(meta.preprocess)
    train = load_split(args.dataset, args.data_root, args.category, 'train', meta.preprocess,
                       cache)
    val = load_split(args.dataset, args.data_root, args.category, 'validation',
                     meta.preprocess, cache)
    data = (torch.from_numpy(train[0]), torch.from_numpy(train[1]))
    rows = []
    network_cfg, trained_prior = model.cfg, model.shape_prior
    for variant in args.variants:
        name, overrides = VARIANTS[variant]
        overrides = dict(overrides)
        model.cfg = dataclasses.replace(network_cfg, **overrides.pop('model', {}))
        model.shape_prior = trained_prior
        if 'shape_prior' in overrides:
            model.cfg = dataclasses.replace(model.cfg, shape_prior_kind='coreset',
                                            shape_prior_components=overrides.pop('shape_prior'))
            model.shape_prior = build_shape_prior(
                'coreset', model.cfg.shape_prior_components,
                overrides.pop('shape_prior_patch', model.cfg.shape_patch_size),
                radius=model.cfg.shape_prior_radius)
            fit_shape_prior(model.shape_prior, train[1], cfg.seed, 'cpu')
        variant_meta = dataclasses.replace(meta, model=model.cfg)
        trained_head, heads = model.scoring_head, []
        for seed in args.seeds:
            minutes = train_head(model, variant_meta, data,
                                 dataclasses.replace(cfg, **overrides), seed)
            heads.append(copy.deepcopy(model.scoring_head))
            label = name if len(args.seeds) == 1 else f'{name}, head seed {seed}'
            rows.append((label, score(model, variant_meta, val, cfg), minutes))
        if args.ensemble and len(heads) > 1:
            model.scoring_head = MeanOfHeads(heads)
            rows.append((f'{name}, mean of the {len(heads)} heads\' logits',
                         score(model, variant_meta, val, cfg), 0.0))
            model.scoring_head = trained_head
    print(f'\nselection set ({len(val[0])} validation samples, {args.copies} synthetic '
          f'anomalies on each), {args.head_epochs} head epochs, network frozen\n')
    print('| head training | learned I-AUROC | P-AUROC | AUPRO@0.3 | '
          + ' | '.join(f'AUPRO@0.3 {kind}' for kind in KINDS)
          + ' | unseen kinds I-AUROC | P-AUROC | AUPRO@0.3 | '
          + ' | '.join(f'AUPRO@0.3 {kind}' for kind in UNSEEN_KINDS) + ' | head training min |')
    print('|---|---|---|---|' + '---|' * (len(KINDS) + 3 + len(UNSEEN_KINDS)) + '---|')
    for name, selection, minutes in rows:
        unseen = selection.get('unseen_learned', {})
        figures = ([selection['learned'][k] for k in ('i_auroc', 'p_auroc', 'aupro@0.3')]
                   + [selection.get(f'learned_{kind}', {}).get('aupro@0.3') for kind in KINDS]
                   + [unseen.get(k) for k in ('i_auroc', 'p_auroc', 'aupro@0.3')]
                   + [selection.get(f'unseen_learned_{kind}', {}).get('aupro@0.3')
                      for kind in UNSEEN_KINDS])
        print(f'| {name} | ' + ' | '.join('-' if v is None else f'{v:.3f}' for v in figures)
              + f' | {minutes:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
