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
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.devices import resolve_device
from dbmr_ros.files import refuse_existing_output
from dbmr_ros.model import DBMRNet, PRESETS
from dbmr_ros.resources import share_dir
from dbmr_ros.training import engine, progress
from dbmr_ros.training.config import TrainConfig
from dbmr_ros.training.optim import build_optimizers, stage_network
from dbmr_ros.training.selection import evaluate_and_calibrate, real_selection
from dbmr_ros.training.shape_prior import fit_shape_prior, PriorMaps
from dbmr_ros.training.util import (atomic_torch_save, broadcast_buffers, distributed, LOG,
                                    rng_state, set_rng_state, setup_logging, weights_digest)

CHECKPOINT = 'checkpoint.safetensors'
TRAIN_STATE = 'train_state.pt'
FINAL = 'model.safetensors'


def load_config(args) -> TrainConfig:
    """The YAML config (default: the preset's), with the command line's overrides."""
    cfg = TrainConfig.load(args.config or share_dir() / 'config' /
                           f'train_{args.preset or "tiny"}.yaml')
    for name in ('preset', 'epochs', 'head_epochs', 'batch_size', 'seed'):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    return cfg


def training_device(requested: str, world: int) -> torch.device:
    """Under DDP on CUDA each process takes its local rank's GPU."""
    if world > 1 and torch.cuda.is_available() and requested in ('auto', 'cuda'):
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
        return device
    return resolve_device(requested)


def save_state(path: Path, model, epoch: int, optimizers, schedulers, history, generator,
               meta: CheckpointMeta) -> None:
    """Everything --resume needs to continue exactly: weights, optimizers, schedulers, RNG."""
    atomic_torch_save({'model': model.state_dict(), 'epoch': epoch,
                       'optimizers': [o.state_dict() for o in optimizers],
                       'schedulers': [s.state_dict() for s in schedulers],
                       'history': history, 'rng': [rng_state(generator)],
                       'calibration': meta.calibration.to_dict()}, path)


def resume(path: Path, model, optimizers, schedulers, generator, rank: int, meta):
    """Load save_state's file into the run -> (start epoch, loss history, meta)."""
    state = torch.load(path, map_location='cpu', weights_only=True)
    model.load_state_dict(state['model'])
    for item, saved in zip(optimizers + schedulers, state['optimizers'] + state['schedulers']):
        item.load_state_dict(saved)
    set_rng_state(state['rng'][rank] if rank < len(state['rng']) else state['rng'][0],
                  generator)
    LOG.info('resumed from %s at epoch %d', path, int(state['epoch']))
    return int(state['epoch']), list(state['history']), dataclasses.replace(
        meta, calibration=calibration.Calibration.from_dict(state['calibration']))


def with_head_stats(model, meta: CheckpointMeta, device, val) -> CheckpointMeta:
    """The head reads maps normalised by good-sample statistics: they are fixed first."""
    detector = Detector(model, dataclasses.replace(meta, calibration=calibration.Calibration()),
                        device)
    return dataclasses.replace(meta, calibration=calibration.Calibration(
        stats=calibration.fit_stats(detector, *val)))


def train(args) -> Path:
    cfg = load_config(args)
    rank, world = distributed()
    device = training_device(args.device, world)
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
        start_epoch, history, meta = resume(state_path, model, optimizers, schedulers,
                                            generator, rank, meta)
    elif args.resume:
        LOG.info('no %s in %s: starting from scratch', TRAIN_STATE, output)
    if model.shape_prior is not None and start_epoch == 0:
        summary = fit_shape_prior(model.shape_prior, train_data[1], device)
        LOG.info('shape prior fitted on the training parts: %s', summary)
    prior_maps = None if model.shape_prior is None else PriorMaps(model.shape_prior)

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
            meta = with_head_stats(model, meta, device, val)
        order = torch.randperm(len(data[0]), generator=generator if world == 1 else
                               torch.Generator().manual_seed(cfg.seed * 1000 + epoch))[rank::world]
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        description = f'epoch {epoch + 1}/{total} {"head" if head_stage else "reconstruction"}'
        if head_stage:
            means = engine.head_epoch(net, model, data, batches, optimizers[1], schedulers[1],
                                      cfg, meta.calibration.stats, generator, device,
                                      description, rank == 0, prior_maps)
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
            save_state(state_path, model, epoch + 1, optimizers, schedulers, history,
                       generator, meta)
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
