"""dbmr-train: train DBMRNet on the good samples of one category.

Trains on train/good, calibrates on validation/good (normalisation statistics of the 2D and 3D
maps, and the decision threshold), and writes atomic checkpoints every epoch so `--resume`
continues a killed run with its optimizer, scheduler and RNG state. Under `torchrun
--nproc_per_node=N` the same command trains with DistributedDataParallel.
"""
import argparse
import dataclasses
import logging
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from dbmr_ros.checkpoint import CheckpointMeta, save_checkpoint
from dbmr_ros.data.datasets import DATASETS, DatasetError, open_dataset
from dbmr_ros.data.preprocess import preprocess, PreprocessCache, PreprocessConfig
from dbmr_ros.dataclass_dict import from_dict
from dbmr_ros.detector import Detector, resolve_device
from dbmr_ros.model import DBMRNet, PRESETS
from dbmr_ros.model.inputs import denormalise_images, group_points, prepare

CONFIG_DIR = Path(__file__).resolve().parent.parent / 'config'
CHECKPOINT = 'checkpoint.safetensors'
TRAIN_STATE = 'train_state.pt'
FINAL = 'model.safetensors'
LOG = logging.getLogger('dbmr-train')


@dataclass
class TrainConfig:
    preset: str = 'tiny'
    model: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    grad_clip: float = 1.0
    augment: bool = True
    brightness_jitter: float = 0.15
    seed: int = 0
    threshold_quantile: float = 1.0
    threshold_margin: float = 1.0
    log_images_every: int = 10

    @classmethod
    def load(cls, path) -> 'TrainConfig':
        values = yaml.safe_load(Path(path).read_text()) or {}
        return from_dict(cls, values, f'{path}: training')

    def model_config(self):
        if self.preset not in PRESETS:
            raise ValueError(f'unknown preset {self.preset!r}; choose one of {list(PRESETS)}')
        return dataclasses.replace(PRESETS[self.preset], **self.model)

    def preprocess_config(self, image_size: int) -> PreprocessConfig:
        return PreprocessConfig.from_dict({**self.preprocess, 'image_size': image_size})


def load_split(kind, root, category, split, pcfg: PreprocessConfig, cache: PreprocessCache):
    """All samples of a split preprocessed to model size: rgb (N, S, S, 3) uint8, xyz (N, S, S, 3)
    float32 (the background removal is cached, never written into the dataset)."""
    rgbs, xyzs = [], []
    for ref in open_dataset(kind, root, category, split):
        sample = ref.load()
        rgb, xyz = preprocess(sample.rgb, sample.xyz, pcfg, cache.cleaned(ref.xyz_path,
                                                                          sample.xyz))
        rgbs.append(rgb)
        xyzs.append(xyz)
    return np.stack(rgbs), np.stack(xyzs)


def augment(rgb: torch.Tensor, xyz: torch.Tensor, generator: torch.Generator,
            brightness_jitter: float = 0.0):
    """The same random flip / 90-degree rotation of the registered grids (points unchanged), and
    a random brightness factor per image in [1 - jitter, 1 + jitter] (lighting changes)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    rgb, xyz = torch.rot90(rgb, k, (1, 2)), torch.rot90(xyz, k, (1, 2))
    if flip % 2:
        rgb, xyz = rgb.flip(2), xyz.flip(2)
    if brightness_jitter > 0:
        factor = 1 + brightness_jitter * (2 * torch.rand(len(rgb), 1, 1, 1,
                                                         generator=generator) - 1)
        rgb = (rgb.float() * factor).round().clamp(0, 255).to(torch.uint8)
    return rgb.contiguous(), xyz.contiguous()


def calibrate(model: DBMRNet, meta: CheckpointMeta, device, rgb: np.ndarray, xyz: np.ndarray,
              cfg: TrainConfig, batch_size: int = 8) -> CheckpointMeta:
    """Normalisation statistics from the raw maps of good validation samples, then the threshold
    rule on their normalised image scores."""
    detector = Detector(model, dataclasses.replace(meta, stats={}), device)
    was_training = model.training
    model.eval()
    sums = {'mean_2d': 0.0, 'mean_3d': 0.0}
    pixels = 0
    for i in range(0, len(rgb), batch_size):
        maps = detector.score_prepared(rgb[i:i + batch_size], xyz[i:i + batch_size],
                                       normalise=False)
        foreground = torch.from_numpy((xyz[i:i + batch_size] != 0).any(-1))
        sums['mean_2d'] += float(maps.map_2d[foreground].sum())
        sums['mean_3d'] += float(maps.map_3d[foreground].sum())
        pixels += int(foreground.sum())
    stats = {k: max(v / max(pixels, 1), 1e-12) for k, v in sums.items()}
    detector.meta = dataclasses.replace(meta, stats=stats)
    scores = np.concatenate([detector.score_prepared(rgb[i:i + batch_size],
                                                     xyz[i:i + batch_size]).score.numpy()
                             for i in range(0, len(rgb), batch_size)])
    model.train(was_training)
    threshold = float(np.quantile(scores, cfg.threshold_quantile) * cfg.threshold_margin)
    rule = (f'quantile {cfg.threshold_quantile} of {len(scores)} good validation scores '
            f'x {cfg.threshold_margin}')
    return dataclasses.replace(meta, stats=stats, threshold=threshold, threshold_rule=rule)


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _rng_state(generator: torch.Generator) -> dict:
    return {'torch': torch.get_rng_state(), 'generator': generator.get_state(),
            'numpy': torch.from_numpy(np.frombuffer(
                np.random.get_state()[1].astype('<u4').tobytes(), dtype=np.uint8).copy()),
            'python': random.getstate()[1]}


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state['torch'])
    generator.set_state(state['generator'])
    keys = np.frombuffer(state['numpy'].numpy().tobytes(), dtype='<u4')
    np.random.set_state(('MT19937', keys, 624, 0, 0.0))
    random.setstate((3, tuple(state['python']), None))


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _distributed():
    """(rank, world_size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        backend = 'nccl' if torch.cuda.is_available() and os.environ.get(
            'DBMR_DIST_BACKEND', '') != 'gloo' else 'gloo'
        dist.init_process_group(backend)
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _setup_logging(output: Path, rank: int) -> None:
    LOG.setLevel(logging.INFO)
    LOG.handlers.clear()
    if rank == 0:
        handler = logging.FileHandler(output / 'train.log')
        handler.setFormatter(logging.Formatter('%(asctime)s %(levelname)s %(message)s'))
        LOG.addHandler(handler)
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(logging.Formatter('%(message)s'))
        LOG.addHandler(console)


def train(args) -> Path:
    cfg = TrainConfig.load(args.config) if args.config else TrainConfig.load(
        CONFIG_DIR / f'train_{args.preset or "tiny"}.yaml')
    for name in ('preset', 'epochs', 'batch_size', 'seed'):
        if getattr(args, name, None) is not None:
            setattr(cfg, name, getattr(args, name))
    rank, world = _distributed()
    if world > 1 and torch.cuda.is_available() and args.device in ('auto', 'cuda'):
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        torch.cuda.set_device(device)
    else:
        device = resolve_device(args.device)
    output = Path(args.output)
    if rank == 0:
        has_run = output.exists() and any(output.iterdir())
        if has_run and not (args.resume or args.overwrite):
            raise FileExistsError(f'{output} already holds a run; pass --resume to continue it '
                                  'or --overwrite to replace it')
        output.mkdir(parents=True, exist_ok=True)
    if world > 1:
        dist.barrier()
    _setup_logging(output, rank)

    model_cfg = cfg.model_config()
    pcfg = cfg.preprocess_config(model_cfg.image_size)
    cache = PreprocessCache(pcfg, args.cache_dir)
    train_rgb, train_xyz = load_split(args.dataset, args.data_root, args.category, 'train', pcfg,
                                      cache)
    val_rgb, val_xyz = load_split(args.dataset, args.data_root, args.category, 'validation',
                                  pcfg, cache)
    LOG.info('%s/%s: %d training and %d validation samples, preset %s, device %s, %d process(es)',
             args.dataset, args.category, len(train_rgb), len(val_rgb), cfg.preset, device, world)

    torch.manual_seed(cfg.seed)
    model = DBMRNet(model_cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.95))
    steps_per_epoch = math.ceil(len(train_rgb) / (cfg.batch_size * world))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch))
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    meta = CheckpointMeta(model=model_cfg, preprocess=pcfg, dataset=args.dataset,
                          category=args.category)
    start_epoch, history = 0, []
    state_path = output / TRAIN_STATE
    if args.resume and state_path.exists():
        state = torch.load(state_path, map_location='cpu', weights_only=True)
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        scheduler.load_state_dict(state['scheduler'])
        _set_rng_state(state['rng'][rank] if rank < len(state['rng']) else state['rng'][0],
                       generator)
        start_epoch, history = int(state['epoch']), list(state['history'])
        LOG.info('resumed from %s at epoch %d', state_path, start_epoch)
    elif args.resume:
        LOG.info('no %s in %s: starting from scratch', TRAIN_STATE, output)

    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(output / 'tensorboard'))
    images_t, points_t = torch.from_numpy(train_rgb), torch.from_numpy(train_xyz)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = torch.randperm(len(train_rgb), generator=generator if world == 1 else
                               torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        order = order[rank::world]
        totals, count, started = {}, 0, time.perf_counter()
        batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        progress = tqdm(batches, desc=f'epoch {epoch + 1}/{cfg.epochs}', disable=rank != 0,
                        leave=False, unit='batch')
        for index in progress:
            rgb, xyz = images_t[index], points_t[index]
            if cfg.augment:
                rgb, xyz = augment(rgb, xyz, generator, cfg.brightness_jitter)
            inp = prepare(rgb.to(device), xyz.to(device), model_cfg.num_points,
                          model_cfg.group_size, generator=generator)
            groups = group_points(inp, model_cfg.num_groups, model_cfg.group_size)
            out = net(inp.images, groups, generator)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            for key, value in [('loss', out.loss), *out.losses.items()]:
                totals[key] = totals.get(key, 0.0) + float(value.detach()) * len(index)
            count += len(index)
            speed = count / (time.perf_counter() - started)
            progress.set_postfix(loss=f"{float(out.loss.detach()):.4f}", img_s=f'{speed:.1f}')
        means = {k: v / max(count, 1) for k, v in totals.items()}
        history.append(means['loss'])
        if rank == 0:
            meta = calibrate(model, dataclasses.replace(meta, epoch=epoch + 1), device, val_rgb,
                             val_xyz, cfg)
            save_checkpoint(output / CHECKPOINT, model.state_dict(), meta)
            _atomic_torch_save({'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                'scheduler': scheduler.state_dict(), 'epoch': epoch + 1,
                                'history': history, 'rng': [_rng_state(generator)]}, state_path)
            for key, value in means.items():
                writer.add_scalar(f'train/{key}', value, epoch + 1)
            writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], epoch + 1)
            writer.add_scalar('train/images_per_second', count * world /
                              (time.perf_counter() - started), epoch + 1)
            if cfg.log_images_every and (epoch + 1) % cfg.log_images_every == 0:
                _log_reconstructions(writer, model, inp, groups, epoch + 1)
            LOG.info('epoch %d/%d loss %.4f (2d %.4f 3d %.4f cross %.4f) %.1f img/s threshold '
                     '%.3f', epoch + 1, cfg.epochs, means['loss'], means['loss_2d'],
                     means['loss_3d'], means['loss_cross'],
                     count * world / (time.perf_counter() - started), meta.threshold)
        if world > 1:
            dist.barrier()
    final = output / FINAL
    if rank == 0:
        if start_epoch >= cfg.epochs and (output / CHECKPOINT).exists() and not final.exists():
            LOG.info('nothing left to train')
        if start_epoch < cfg.epochs or not final.exists():
            if start_epoch >= cfg.epochs:  # a resumed, finished run without its final file
                meta = calibrate(model, dataclasses.replace(meta, epoch=cfg.epochs), device,
                                 val_rgb, val_xyz, cfg)
            save_checkpoint(final, model.state_dict(), meta)
        writer.close()
        LOG.info('wrote %s', final)
    if world > 1:
        print(f'rank {rank} weights sha1 {weights_digest(model)}', file=sys.stderr, flush=True)
        dist.barrier()
        dist.destroy_process_group()
    return final


def weights_digest(model) -> str:
    """SHA-1 of all parameters (DDP ranks must agree on it)."""
    import hashlib
    digest = hashlib.sha1()
    for name, value in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _log_reconstructions(writer, model, inp, groups, epoch):
    model.eval()
    with torch.no_grad():
        two = type(groups)(*(t[:2] for t in groups))
        rec, _ = model.reconstruct(model.embed(inp.images[:2], two), two)
    model.train()
    pair = torch.cat([denormalise_images(inp.images[:2]), denormalise_images(rec)], dim=2)
    writer.add_images('reconstruction', (pair / 255.0).permute(0, 3, 1, 2), epoch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-train', description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', required=True, choices=DATASETS)
    parser.add_argument('--data-root', required=True, help='folder holding <category>/')
    parser.add_argument('--category', required=True)
    parser.add_argument('--output', required=True, help='run directory (checkpoints, logs)')
    parser.add_argument('--config', help='YAML config (default: config/train_<preset>.yaml)')
    parser.add_argument('--preset', choices=sorted(PRESETS), help='model preset override')
    parser.add_argument('--epochs', type=int)
    parser.add_argument('--batch-size', type=int)
    parser.add_argument('--seed', type=int)
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda[:N]')
    parser.add_argument('--resume', action='store_true', help='continue the run in --output')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the files of an earlier run in --output')
    parser.add_argument('--cache-dir', help='preprocessing cache (default ~/.cache/dbmr_ros)')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (DatasetError, FileExistsError, ValueError, RuntimeError) as error:
        print(f'dbmr-train: error: {error}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
