"""Scoring-head training choices, judged on the selection set only (validation/good plus
synthetic anomalies on it; never test samples): the figures behind the README's design notes.

The network of a trained checkpoint stays frozen; for each variant a fresh scoring head (the
same initial weights every time) is trained for `--head-epochs` on the training split as
dbmr-train's stage 2 does, and scored on the validation samples with `--copies` synthetic
anomalies on each (more copies than training's 2: the differences looked for are a few points).

    .venv/bin/python benchmarks/ablate_head.py CHECKPOINT --data-root ../shared/data/mvtec3d \
        --category cable_gland [--head-epochs 50 --copies 6]
"""
import argparse
import dataclasses
import math
import sys
import time

import torch

from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.resources import share_dir
from dbmr_ros.train import build_optimizers, evaluate_and_calibrate, stage_network
from dbmr_ros.training import engine
from dbmr_ros.training.config import TrainConfig

# Training config overrides per variant.
VARIANTS = {
    'focal loss, each anomalous pixel alike (default)': {'head_loss_per_defect': False},
    'focal loss, each defect alike': {'head_loss_per_defect': True},
}


def train_head(model, meta, data, cfg: TrainConfig, seed: int) -> float:
    """A fresh head on the frozen network, trained in place; returns the minutes taken."""
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
    parser.add_argument('--seed', type=int, default=1)
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
    for name, overrides in VARIANTS.items():
        minutes = train_head(model, meta, data, dataclasses.replace(cfg, **overrides), args.seed)
        _, selection = evaluate_and_calibrate(model, meta, 'cpu', val, cfg)
        rows.append((name, selection['learned'], minutes))
        print(f'{name}: {selection["learned"]}', file=sys.stderr, flush=True)
    print(f'\nselection set ({len(val[0])} validation samples, {args.copies} synthetic '
          f'anomalies on each), {args.head_epochs} head epochs, network frozen\n')
    print('| head training | learned I-AUROC | P-AUROC | AUPRO@0.3 | head training min |')
    print('|---|---|---|---|---|')
    for name, metrics, minutes in rows:
        print(f'| {name} | {metrics["i_auroc"]:.3f} | {metrics["p_auroc"]:.3f} | '
              f'{metrics["aupro@0.3"]:.3f} | {minutes:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
