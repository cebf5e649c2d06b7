"""Per-frame cost of the Detector for each preset on this machine (not a test).

Prints, per preset: the valid points at the model's input size and how many of them are
grouped, parameters, FLOPs per frame (network and scoring head), median latency per call split
into preprocessing and model (its parts where they run eagerly, '-' where a CUDA graph
replays them as one; on CUDA the shape prior runs beside the network, its part about 0),
the whole call's median (total, frames/s), and peak resident memory. Input: a real MVTec 3D-AD
cable_gland test frame (400x400 organized cloud with all its points; background removal at that
resolution is part of preprocessing) from ../shared, or a synthetic 400x400 frame where
../shared is absent. Each preset's model is the one its default training config trains
(`tiny`: with the 2048-entry shape prior over 7 x 7 windows; `--shape-prior 0` measures it
without, `--shape-prior-radius 2` over 5 x 5 windows).

    .venv/bin/python benchmarks/bench_model.py [--presets tiny base] [--frames 30]
        [--num-points N] [--shape-prior N] [--shape-prior-radius R]
        [--device cuda] [--batch N]
        [--preprocessing auto|numpy|torch] [--no-cuda-graphs] [--no-triton-fps]

--batch N scores N copies of the frame per call (offline evaluation); the times are per call,
frames/s counts frames. --preprocessing picks the Detector's preprocessing (auto: torch on the
device on CUDA, numpy on the CPU). --no-cuda-graphs runs the network eagerly on CUDA.
--no-triton-fps samples the group centres with the graphed torch loop instead of the Triton
kernel on CUDA.
"""
import argparse
import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from dbmr_ros.calibration import Calibration
from dbmr_ros.checkpoint import CheckpointMeta
from dbmr_ros.data.preprocess import preprocess, PreprocessConfig
from dbmr_ros.detector import Detector
from dbmr_ros.model import DBMRNet, point_ops, PRESETS
from dbmr_ros.model.dbmrnet import count_parameters
from dbmr_ros.model.inputs import group_points, prepare
from dbmr_ros.model.scoring import anomaly_maps
from dbmr_ros.resources import share_dir
from dbmr_ros.result import MODEL_PARTS
from dbmr_ros.training.config import TrainConfig

STAGES = ('preprocess', 'model') + MODEL_PARTS + ('total',)
SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'mvtec3d'


def load_frame():
    if (SHARED / 'cable_gland').exists():
        from dbmr_ros.data import open_dataset
        refs = open_dataset('mvtec3d', SHARED, 'cable_gland', 'test')
        ref = next((r for r in refs if r.name.endswith('bent/001')), refs[0])
        sample = ref.load()
        return sample.rgb, sample.xyz, f'{ref.name} (400x400)'
    from dbmr_ros.data.synthetic import render_sample
    sample = render_sample(np.random.default_rng(0), 'puck', 400, 'bump')
    return sample.rgb, sample.xyz, 'synthetic puck (400x400)'


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def random_detector(preset: str, device: str, overrides: dict = None,
                    preprocessing: str = 'auto', cuda_graphs: bool = True) -> Detector:
    """A Detector of the model that the preset's default training config trains
    (config/train_PRESET.yaml: the preset and its `model:` fields, so `tiny` with the shape
    prior), its DBMRConfig fields `overrides` replaced, with random weights (the cost does not
    depend on them)."""
    default = TrainConfig.load(share_dir() / 'config' / f'train_{preset}.yaml').model_config()
    cfg = dataclasses.replace(default, **(overrides or {}))
    torch.manual_seed(0)
    meta = CheckpointMeta(model=cfg, preprocess=PreprocessConfig(image_size=cfg.image_size),
                          calibration=Calibration.manual(cfg, {'mean_2d': 1.0, 'mean_3d': 1.0},
                                                         1.0))
    return Detector(DBMRNet(cfg), meta, device, preprocessing=preprocessing,
                    cuda_graphs=cuda_graphs)


def bench(preset: str, rgb, xyz, frames: int, device: str, overrides: dict = None,
          batch: int = 1, preprocessing: str = 'auto', cuda_graphs: bool = True) -> dict:
    detector = random_detector(preset, device, overrides, preprocessing, cuda_graphs)
    cfg, meta = detector.model.cfg, detector.meta
    # FLOPs of the network and the scoring (the head) for one frame.
    rgb_s, xyz_s = (a[None] for a in preprocess(rgb, xyz, meta.preprocess))
    inp = prepare(torch.from_numpy(rgb_s).to(device), torch.from_numpy(xyz_s).to(device),
                  cfg.num_points, cfg.group_size)
    groups = group_points(inp, cfg.num_groups, cfg.group_size)
    with FlopCounterMode(display=False) as counter:
        tokens = detector.model.score_tokens(inp.images, groups)
        anomaly_maps(detector.model, inp, groups, tokens, meta.calibration.stats)
    flops = counter.get_total_flops()
    rgb_in, xyz_in = ([rgb] * batch, [xyz] * batch) if batch > 1 else (rgb, xyz)
    for _ in range(2):  # warm-up
        detector(rgb_in, xyz_in)
    timings = {k: [] for k in STAGES}
    for _ in range(frames):
        start = time.perf_counter()
        result = detector(rgb_in, xyz_in)
        result = result[0] if batch > 1 else result
        # total: the whole call, including checks and resizing the maps to the input size.
        timings['total'].append((time.perf_counter() - start) * 1e3)
        for key, value in result.timings_ms.items():
            timings[key].append(value)
    # A replayed CUDA graph has no parts: grouping / network / scoring stay empty.
    median = {k: statistics.median(v) if v else None for k, v in timings.items()}
    return {'preset': preset, 'params_m': count_parameters(detector.model) / 1e6,
            'gflops': flops / 1e9, **median, 'fps': 1000.0 * batch / median['total'],
            'peak_rss_mb': peak_rss_mb(), 'valid_points': int(inp.valid.sum()),
            'grouped_points': cfg.num_points}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--presets', nargs='+', default=['tiny', 'base'], choices=list(PRESETS))
    parser.add_argument('--frames', type=int, default=30)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--num-points', type=int,
                        help='override the points grouped per cloud (more than the valid ones: '
                             'every valid point is grouped)')
    parser.add_argument('--shape-prior', type=int,
                        help='override shape_prior_components (0: no shape prior; default: the '
                             "training config's, 2048 for tiny)")
    parser.add_argument('--shape-prior-radius', type=int,
                        help="override shape_prior_radius (default: the training config's)")
    parser.add_argument('--batch', type=int, default=1, help='frames per Detector call')
    parser.add_argument('--preprocessing', default='auto', choices=('auto', 'numpy', 'torch'))
    parser.add_argument('--no-cuda-graphs', action='store_true',
                        help='run the network eagerly on CUDA (no graph replay)')
    parser.add_argument('--no-triton-fps', action='store_true',
                        help='farthest point sampling by the graphed torch loop on CUDA')
    args = parser.parse_args(argv)
    point_ops.use_triton_fps = not args.no_triton_fps
    rgb, xyz, source = load_frame()
    gpu = f' ({torch.cuda.get_device_name(args.device)})' if args.device.startswith('cuda') else ''
    print(f'input: {source}; device {args.device}{gpu}; torch threads {torch.get_num_threads()}'
          f'; batch {args.batch}; preprocessing {args.preprocessing}'
          + (f'; num_points {args.num_points}' if args.num_points else '')
          + (f'; shape_prior_components {args.shape_prior}'
             if args.shape_prior is not None else '')
          + (f'; shape_prior_radius {args.shape_prior_radius}'
             if args.shape_prior_radius else '')
          + ('; CUDA graphs off' if args.no_cuda_graphs else '')
          + (f'; farthest point sampling: {point_ops.fps_method(args.device)}'
             if args.device.startswith('cuda') else ''))
    overrides = {name: value for name, value in (
        ('num_points', args.num_points), ('shape_prior_components', args.shape_prior),
        ('shape_prior_radius', args.shape_prior_radius)) if value is not None}
    rows = [bench(p, rgb, xyz, args.frames, args.device, overrides, args.batch,
                  args.preprocessing, not args.no_cuda_graphs)
            for p in args.presets]
    print('| preset | valid / grouped points | params (M) | GFLOPs/frame | preprocess ms | '
          'model ms (grouping / shape prior / network / scoring) | total ms | frames/s | '
          'peak RSS MB |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        parts = ' / '.join('-' if r[k] is None else f'{r[k]:.1f}'
                           for k in MODEL_PARTS)
        print(f'| {r["preset"]} | {r["valid_points"]} / {r["grouped_points"]} | '
              f'{r["params_m"]:.2f} | {r["gflops"]:.2f} | {r["preprocess"]:.1f} | '
              f'{r["model"]:.1f} ({parts}) | {r["total"]:.1f} | {r["fps"]:.1f} | '
              f'{r["peak_rss_mb"]:.0f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
