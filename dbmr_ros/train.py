"""dbmr-train: train DBMRNet and its scoring head on the good samples of one category.

Two stages (see `dbmr_ros.training.engine`): anomaly-aware masked reconstruction for `epochs`,
then the scoring head on synthetic anomalies for `head_epochs`. Calibration (normalisation
statistics and thresholds, `dbmr_ros.calibration`) is fitted on validation/good plus synthetic
anomalies on it, every `eval_every` epochs and at the end of each stage; the same set's metrics
are logged (model selection never sees test samples), and where the validation split holds
labelled defects (real ones; MVTec 3D-AD's holds none) both scorings on them (`real_*`).
Checkpoints are atomic and written every epoch, so `--resume` continues a killed run exactly
(optimizers, schedulers, RNG state). Under `torchrun --nproc_per_node=N` the same command
trains with DistributedDataParallel.
"""
import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from dbmr_ros import calibration
from dbmr_ros.checkpoint import CheckpointMeta, save_checkpoint
from dbmr_ros.command import run_command
from dbmr_ros.data.datasets import DATASETS
from dbmr_ros.data.prepared import labelled_defects, load_split
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector, resolve_device
from dbmr_ros.evaluate import evaluate_category
from dbmr_ros.files import refuse_existing_output
from dbmr_ros.model import DBMRNet, PRESETS
from dbmr_ros.resources import share_dir
from dbmr_ros.training import engine, progress
from dbmr_ros.training.config import TrainConfig
from dbmr_ros.training.shape_prior import fit_shape_prior
from dbmr_ros.training.util import (atomic_torch_save, broadcast_buffers, distributed, LOG,
                                    lr_factor, rng_state, set_rng_state, setup_logging,
                                    weights_digest)

CHECKPOINT = 'checkpoint.safetensors'
TRAIN_STATE = 'train_state.pt'
FINAL = 'model.safetensors'

SELECTION_METRICS = ('i_auroc', 'p_auroc', 'aupro@0.3')


def evaluate_and_calibrate(model, meta: CheckpointMeta, device, val, cfg: TrainConfig,
                           unseen_copies: int = 0):
    """Calibration on validation/good + synthetic anomalies on it, and that selection set's
    metrics per scoring and, for the learned one, per kind of synthetic defect; with
    `unseen_copies`, also both scorings on that many of each defect kind that training never
    draws on every validation sample, the learned map also per such kind:
    (calibrated meta, {'learned' | 'paper' | 'learned_<kind>' | 'unseen_<scoring>' |
    'unseen_learned_<kind>': metrics})."""
    detector = Detector(model, dataclasses.replace(meta, calibration=calibration.Calibration()),
                        device)
    fitted, results = calibration.fit(
        detector, val[0], val[1], cfg.anomaly_config(), cfg.threshold_rule_config(),
        seed=cfg.seed + 1, copies=cfg.calibration_copies,
        fitted_on=f'{meta.dataset}/{meta.category} validation/good ({len(val[0])} samples) '
                  f'and {cfg.calibration_copies} synthetic anomalies on each')
    computed = results.compute()
    selection = {'learned': {k: computed[k] for k in SELECTION_METRICS},
                 'paper': {k: computed['paper'][k] for k in SELECTION_METRICS}}
    # The learned map per kind of synthetic defect (against all good samples): the pooled
    # figures hide a kind that it misses. Its map alone: each other one costs seconds.
    selection.update(_per_kind('learned', results))
    if unseen_copies:
        scorer = Detector(model, dataclasses.replace(meta, calibration=fitted), device)
        unseen = calibration.unseen_results(scorer, *val, seed=cfg.seed + 2,
                                            copies=unseen_copies)
        # A scoring is left out where the validation parts were too small for every kind.
        selection.update(_both_scorings('unseen', unseen.compute(variants=('fused', 'paper'))))
        selection.update(_per_kind('unseen_learned', unseen))
    return dataclasses.replace(meta, calibration=fitted), selection


def _per_kind(prefix: str, results) -> dict:
    """CategoryResults -> {'<prefix>_<kind>': the learned map's I-AUROC and AUPRO@0.3 on that
    kind of defect against all good samples}."""
    return {f'{prefix}_{kind}': {k: values[k] for k in ('i_auroc', 'aupro@0.3')}
            for kind, values in results.compute_by_kind(variants=('fused',)).items()}


def _both_scorings(prefix: str, figures: dict) -> dict:
    """CategoryResults.compute's figures -> {'<prefix>_learned' | '<prefix>_paper': the
    selection metrics that are defined}, a scoring left out where none is."""
    selection = {}
    for scoring, values in (('learned', figures), ('paper', figures['paper'])):
        defined = {k: values[k] for k in SELECTION_METRICS if values[k] is not None}
        if defined:
            selection[f'{prefix}_{scoring}'] = defined
    return selection


def real_selection(model, meta: CheckpointMeta, device, dataset, root, category,
                   cache: PreprocessCache) -> dict:
    """Both scorings on the validation split's labelled defects and its good samples, each at
    its own resolution, as dbmr-eval scores the test split: {'real_learned' | 'real_paper':
    metrics}. Real defects judge a recipe better than synthetic ones can (docs/results.md)."""
    return _both_scorings('real', evaluate_category(
        Detector(model, meta, device), dataset, root, category, cache, log=lambda *_: None,
        split='validation').compute(variants=('fused', 'paper')))


def build_optimizers(model: DBMRNet, cfg: TrainConfig, steps_per_epoch: int):
    """(optimizers, schedulers), each (reconstruction stage, head stage): AdamW, warm-up then
    cosine decay over each stage's steps."""
    head_parameters = list(model.scoring_head.parameters())
    head_ids = {id(p) for p in head_parameters}
    reconstruction = torch.optim.AdamW([p for p in model.parameters() if id(p) not in head_ids],
                                       lr=cfg.lr, weight_decay=cfg.weight_decay,
                                       betas=(0.9, 0.95))
    head = torch.optim.AdamW(head_parameters, lr=cfg.head_lr, weight_decay=1e-4)
    return (reconstruction, head), (
        torch.optim.lr_scheduler.LambdaLR(reconstruction, lambda step: lr_factor(
            step, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch)),
        torch.optim.lr_scheduler.LambdaLR(head, lambda step: lr_factor(
            step, cfg.warmup_epochs * steps_per_epoch, cfg.head_epochs * steps_per_epoch)))


def stage_network(model: DBMRNet, head_stage: bool, world: int):
    """What the optimizer steps through: the network in stage 1, the head in stage 2 (the rest
    frozen), each wrapped for DDP when distributed."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith('scoring_head.') == head_stage)
    module = model.scoring_head if head_stage else model
    return torch.nn.parallel.DistributedDataParallel(module) if world > 1 else module


def train(args) -> Path:
    cfg = TrainConfig.load(args.config or share_dir() / 'config' /
                           f'train_{args.preset or "tiny"}.yaml')
    for name in ('preset', 'epochs', 'head_epochs', 'batch_size', 'seed'):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    rank, world = distributed()
    if world > 1 and torch.cuda.is_available() and args.device in ('auto', 'cuda'):
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    else:
        device = resolve_device(args.device)
    output = Path(args.output)
    if rank == 0:
        refuse_existing_output(output, args.resume or args.overwrite,
                               '--resume to continue it, or --overwrite', 'a run')
        output.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()
    setup_logging(output, rank)

    model_cfg = cfg.model_config()
    pcfg = cfg.preprocess_config(model_cfg.image_size)
    cache = PreprocessCache(pcfg, args.cache_dir)
    train_data = load_split(args.dataset, args.data_root, args.category, 'train', pcfg, cache)
    val = load_split(args.dataset, args.data_root, args.category, 'validation', pcfg, cache)
    LOG.info('%s/%s: %d training and %d validation samples, preset %s, device %s, %d process(es)',
             args.dataset, args.category, len(train_data[0]), len(val[0]), cfg.preset, device,
             world)
    real_defects = labelled_defects(args.dataset, args.data_root, args.category)
    if real_defects:
        LOG.info('validation holds %d labelled defects: scored with its good samples at every '
                 'selection (real_learned, real_paper)', real_defects)

    torch.manual_seed(cfg.seed)
    model = DBMRNet(model_cfg).to(device)
    steps_per_epoch = math.ceil(len(train_data[0]) / (cfg.batch_size * world))
    optimizers, schedulers = build_optimizers(model, cfg, steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    meta = CheckpointMeta(model=model_cfg, preprocess=pcfg, anomalies=cfg.anomaly_config(),
                          dataset=args.dataset, category=args.category)
    start_epoch, history = 0, []
    state_path = output / TRAIN_STATE
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location='cpu', weights_only=True)
        model.load_state_dict(state['model'])
        for item, saved in zip(optimizers + schedulers, state['optimizers'] + state['schedulers']):
            item.load_state_dict(saved)
        set_rng_state(state['rng'][rank] if rank < len(state['rng']) else state['rng'][0],
                      generator)
        start_epoch, history = int(state['epoch']), list(state['history'])
        meta = dataclasses.replace(meta, calibration=calibration.Calibration.from_dict(
            state['calibration']))
        LOG.info('resumed from %s at epoch %d', state_path, start_epoch)
    elif args.resume:
        LOG.info('no %s in %s: starting from scratch', TRAIN_STATE, output)
    if model.shape_prior is not None and start_epoch == 0:
        summary = fit_shape_prior(model.shape_prior, train_data[1], cfg.seed, device)
        LOG.info('shape prior fitted on the training parts: %s', summary)

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output / 'tensorboard'))
    # The preprocessed training set lives on the device for the whole run (224 px: 0.75 MB a
    # sample): batches are gathered there, nothing crosses the bus per step.
    data = (torch.from_numpy(train_data[0]).to(device), torch.from_numpy(train_data[1]).to(device))
    total, net, stage = cfg.epochs + cfg.head_epochs, None, None
    for epoch in range(start_epoch, total):
        head_stage = epoch >= cfg.epochs
        if stage != head_stage:
            net, stage = stage_network(model, head_stage, world), head_stage
        if head_stage and not meta.calibration.stats:
            # The head reads maps normalised by good-sample statistics: fix them first.
            detector = Detector(model, dataclasses.replace(
                meta, calibration=calibration.Calibration()), device)
            meta = dataclasses.replace(meta, calibration=calibration.Calibration(
                stats=calibration.fit_stats(detector, *val)))
        order = torch.randperm(len(data[0]), generator=generator if world == 1 else
                               torch.Generator().manual_seed(cfg.seed * 1000 + epoch))[rank::world]
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        description = f'epoch {epoch + 1}/{total} {"head" if head_stage else "reconstruction"}'
        if head_stage:
            means = engine.head_epoch(net, model, data, batches, optimizers[1], schedulers[1],
                                      cfg, meta.calibration.stats, generator, device,
                                      description, rank == 0)
        else:
            means = engine.reconstruction_epoch(net, model, data, batches, optimizers[0],
                                                schedulers[0], cfg, generator, device,
                                                description, rank == 0)
        if world > 1:
            broadcast_buffers(model)
        history.append(means['loss'])
        meta = dataclasses.replace(meta, epoch=epoch + 1)
        if rank == 0:
            progress.log_epoch(writer, description, means, epoch + 1)
            stage_end = epoch + 1 in (cfg.epochs, total)
            if stage_end or (cfg.eval_every and (epoch + 1) % cfg.eval_every == 0):
                # The unseen kinds at the end only: the head is trained by then (they add
                # about 20 s to the final evaluation on two CPU cores).
                meta, selection = evaluate_and_calibrate(model, meta, device, val, cfg,
                                                         int(epoch + 1 == total))
                if real_defects:
                    selection.update(real_selection(model, meta, device, args.dataset,
                                                    args.data_root, args.category, cache))
                progress.log_selection(writer, selection, epoch + 1)
                save_checkpoint(output / CHECKPOINT, model.state_dict(), meta)
            if cfg.log_images_every and (epoch + 1) % cfg.log_images_every == 0:
                progress.log_reconstructions(writer, model, data, device, epoch + 1)
            atomic_torch_save({'model': model.state_dict(), 'epoch': epoch + 1,
                               'optimizers': [o.state_dict() for o in optimizers],
                               'schedulers': [s.state_dict() for s in schedulers],
                               'history': history, 'rng': [rng_state(generator)],
                               'calibration': meta.calibration.to_dict()}, state_path)
        if world > 1:
            dist.barrier()
    final = output / FINAL
    if rank == 0:
        if start_epoch >= total and not final.exists() and not meta.calibration.thresholds:
            meta, _ = evaluate_and_calibrate(model, meta, device, val, cfg)  # resumed, finished
        if start_epoch < total or not final.exists():
            save_checkpoint(final, model.state_dict(), meta)
        writer.close()
        LOG.info('wrote %s', final)
    if world > 1:
        print(f'rank {rank} weights sha1 {weights_digest(model)}', file=sys.stderr, flush=True)
        dist.barrier()
        dist.destroy_process_group()
    return final


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-train', description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', required=True, choices=DATASETS)
    parser.add_argument('--data-root', required=True, help='folder holding <category>/')
    parser.add_argument('--category', required=True)
    parser.add_argument('--output', required=True, help='run directory (checkpoints, logs)')
    parser.add_argument('--config', help='YAML config (default: config/train_<preset>.yaml)')
    parser.add_argument('--preset', choices=sorted(PRESETS), help='model preset override')
    parser.add_argument('--epochs', type=int, help='reconstruction epochs (stage 1)')
    parser.add_argument('--head-epochs', type=int, help='scoring head epochs (stage 2)')
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--seed', type=int)
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    parser.add_argument('--resume', action='store_true', help='continue the run in --output')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the files of an earlier run in --output')
    parser.add_argument('--cache-dir', help='preprocessing cache (default ~/.cache/dbmr_ros)')
    return parser


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command('dbmr-train', lambda: train(args) and None)


if __name__ == '__main__':
    sys.exit(main())
