"""Training throughput of each stage per preset on this machine (not a test).

Runs the training engine's own steps (`dbmr_ros.training.engine`, on the chosen device) over
the good training samples of the real cable_gland class from ../shared (synthetic ones where it
is absent), after a warm-up, and prints images per second of stage 1 (anomaly-aware masked
reconstruction) and stage 2 (scoring head, network frozen).

    .venv/bin/python benchmarks/bench_train.py [--presets tiny base] [--device cuda]
        [--batch-size N] [--steps 20] [--float32] [--profile]

--profile: each stage's host time per batch of each part the engine marks (on CUDA, queued
work counts where the host next waits); the profiler costs a few per cent.

A run takes at most (epochs / stage-1 rate + head_epochs / stage-2 rate) x samples + calibration
(~1 s per validation sample on 2 CPU cores): dbmr-train's CPU head stage speeds up as it goes
(`training.shape_prior.PriorMaps`)."""
import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import profile, ProfilerActivity

from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.devices import resolve_device
from dbmr_ros.model import DBMRNet
from dbmr_ros.resources import share_dir
from dbmr_ros.training.optim import build_optimizers, stage_network
from dbmr_ros.training import engine
from dbmr_ros.training.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'mvtec3d'
# The parts `dbmr_ros.training.engine` marks, per stage, in the order a step runs them.
PARTS = {'reconstruction': ('synthesis', 'grouping', 'forward', 'backward', 'optimizer'),
         'head': ('synthesis', 'grouping', 'frozen network', 'shape prior', 'head inputs',
                  'forward', 'backward', 'optimizer')}


def training_samples(cfg: TrainConfig):
    """(rgb, xyz) tensors (N, S, S, 3) at the preset's size and the data's name."""
    pcfg = cfg.preprocess_config(cfg.model_config().image_size)
    if (SHARED / 'cable_gland').exists():
        rgb, xyz = load_split('mvtec3d', SHARED, 'cable_gland', 'train', pcfg,
                              PreprocessCache(pcfg))
        name = f'cable_gland train/good ({len(rgb)} real samples)'
    else:
        from dbmr_ros.data.preprocess import preprocess
        from dbmr_ros.data.synthetic import render_sample
        rng = np.random.default_rng(0)
        pairs = [preprocess(s.rgb, s.xyz, pcfg) for s in
                 (render_sample(rng, 'puck', 400) for _ in range(32))]
        rgb, xyz = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
        name = f'synthetic pucks ({len(rgb)} samples)'
    return (torch.from_numpy(rgb), torch.from_numpy(xyz)), name


def bench(preset: str, device, batch_size, steps: int, float32: bool = False,
          profiled: bool = False) -> dict:
    cfg = TrainConfig.load(share_dir() / 'config' / f'train_{preset}.yaml')
    cfg.batch_size = batch_size or cfg.batch_size
    cfg.mixed_precision = cfg.mixed_precision and not float32
    data, source = training_samples(cfg)
    data = tuple(d.to(device) for d in data)  # as dbmr-train keeps them
    torch.manual_seed(cfg.seed)
    model = DBMRNet(cfg.model_config()).to(device)
    optimizers, schedulers = build_optimizers(model, cfg, math.ceil(len(data[0]) /
                                                                    cfg.batch_size))
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(steps * cfg.batch_size, generator=generator) % len(data[0])
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    rates, parts = {}, {}
    for stage, epoch in (('reconstruction', engine.reconstruction_epoch),
                         ('head', engine.head_epoch)):
        net = stage_network(model, stage == 'head', 1)
        index, extra = (1, ({'mean_2d': 1.0, 'mean_3d': 1.0},)) if stage == 'head' else (0, ())
        for run in ('warm-up', 'timed'):
            chosen = batches[:2] if run == 'warm-up' else batches
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            with profile(activities=[ProfilerActivity.CPU]) if profiled and run == 'timed' \
                    else contextlib.nullcontext() as prof:
                start = time.perf_counter()
                epoch(net, model, data, chosen, optimizers[index], schedulers[index], cfg,
                      *extra, generator, device, stage, False)
                if device.type == 'cuda':
                    torch.cuda.synchronize(device)
                elapsed = time.perf_counter() - start
            rates[stage] = len(chosen) * cfg.batch_size / elapsed
            if prof is not None:   # ms per batch of each marked part and of the whole step
                per_batch = {e.key: e.cpu_time_total / 1e3 / len(chosen)
                             for e in prof.key_averages()}
                parts[stage] = {part: per_batch.get(part, 0.0) for part in PARTS[stage]}
                parts[stage]['wall'] = elapsed * 1e3 / len(chosen)
    return {'preset': preset, 'batch_size': cfg.batch_size, 'source': source, **rates,
            'parts': parts,
            'precision': 'bf16' if cfg.mixed_precision and device.type == 'cuda' else 'float32',
            'peak_cuda_mb': (torch.cuda.max_memory_allocated(device) / 2 ** 20
                             if device.type == 'cuda' else float('nan'))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--presets', nargs='+', default=['tiny', 'base'])
    parser.add_argument('--device', default='auto')
    parser.add_argument('--batch-size', type=int, help='default: the preset config\'s')
    parser.add_argument('--steps', type=int, default=20, help='timed optimizer steps per stage')
    parser.add_argument('--profile', action='store_true',
                        help="also print each stage's time per marked part")
    parser.add_argument('--float32', action='store_true',
                        help='no bf16 autocast on CUDA, whatever the config says')
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else (
        f'CPU, {torch.get_num_threads()} torch threads')
    rows = [bench(p, device, args.batch_size, args.steps, args.float32, args.profile)
            for p in args.presets]
    print(f'device {device} ({name}); data: {rows[0]["source"]}; {args.steps} steps per stage')
    print('| preset | batch | precision | stage 1 images/s | stage 2 images/s | peak CUDA MB |')
    print('|---|---|---|---|---|---|')
    for r in rows:
        peak = '-' if math.isnan(r['peak_cuda_mb']) else f'{r["peak_cuda_mb"]:.0f}'
        print(f'| {r["preset"]} | {r["batch_size"]} | {r["precision"]} | '
              f'{r["reconstruction"]:.1f} | {r["head"]:.1f} | {peak} |')
    for r in rows:
        for stage, times in r['parts'].items():
            cells = [f'{times[p]:.0f} ({100 * times[p] / times["wall"]:.0f} %)'
                     for p in PARTS[stage]]
            print(f'\n{r["preset"]}, stage {1 if stage == "reconstruction" else 2} ({stage}), '
                  f'batch {r["batch_size"]}: ms per batch (share of {times["wall"]:.0f} ms)\n| '
                  + ' | '.join(PARTS[stage]) + ' |\n|' + '---|' * len(PARTS[stage])
                  + '\n| ' + ' | '.join(cells) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
