"""Where the batched preprocessing (`data/preprocess_batched.py`) spends its time, stage by stage
(not a test). Each stage runs on the same real cable_gland frame (`bench_model.load_frame`),
repeated `--batch` times; on CUDA each stage is recorded as its own CUDA graph and timed over
`--calls` replays with CUDA events (so the figures are GPU time plus graph launch), on the CPU
eagerly. The whole step is timed the same way ('all stages, one graph'), and the numpy
reference per frame beside it. Before the
stages, the Detector's first step: the raw frames stacked into (page-locked, on CUDA) host
memory and copied to the device (`host_transfer.stack_on_device`), on one thread and on its
pool, wall time to the copy's end.

    .venv/bin/python benchmarks/bench_preprocess.py [--device cuda] [--batch 1 32] [--calls 50]
        [--no-triton]
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dbmr_ros.cuda_graphs import GraphedFunction
from dbmr_ros.data import preprocess_batched as batched
from dbmr_ros.data import window_search
from dbmr_ros.data.preprocess import preprocess, PreprocessConfig
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.host_transfer import PARALLEL_BYTES, POOL_SIZE, stack_on_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import load_frame  # noqa: E402


def stages(cfg: PreprocessConfig):
    """(name, function of (rgb, xyz, valid, kept_without_plane)) in the order they run."""
    eps, stride = cfg.dbscan_eps, cfg.dbscan_stride

    def grid(xyz, kept):
        return xyz[:, ::stride, ::stride], kept[:, ::stride, ::stride]

    def joins(xyz, kept):
        g, v = grid(xyz, kept)
        labels, _ = batched.grid_components(g, v, eps)
        largest = batched._largest(labels, v)
        touching = window_search.touching_search(g, v, eps)
        for _ in range(batched.JOIN_WAVES):
            largest = largest | batched._joining(labels, v, touching(largest))
        return largest

    return (
        ('valid mask', lambda rgb, xyz, valid, kept: valid_mask(xyz)),
        ('support plane', lambda rgb, xyz, valid, kept: batched.support_plane_masks(
            xyz, valid, cfg)),
        ('grid components', lambda rgb, xyz, valid, kept: batched.grid_components(
            *grid(xyz, kept), eps)[0]),
        ('largest + joins', lambda rgb, xyz, valid, kept: joins(xyz, kept)),
        ('stride check', lambda rgb, xyz, valid, kept: batched._stride_fits(
            xyz, kept, eps, stride)),
        ('near cluster (full resolution)', lambda rgb, xyz, valid, kept:
            window_search.near_cluster(xyz, kept, *grid(xyz, kept), stride, eps)),
        ('pad + resize', lambda rgb, xyz, valid, kept: (batched._resize_rgb(rgb, cfg),
                                                        batched._resize_points(xyz, cfg))),
        ('all stages, one graph', lambda rgb, xyz, valid, kept: batched.preprocess_batch(
            rgb, xyz, cfg)),
    )


def time_ms(fn, inputs, calls: int, device: torch.device) -> float:
    """Median ms of fn(*inputs): replays of its CUDA graph on CUDA, eager calls elsewhere."""
    if device.type == 'cuda':
        graphed = GraphedFunction(fn, 'benchmark stage')
        graphed(*inputs)
        if not graphed.usable:
            raise RuntimeError('the stage could not be recorded as a CUDA graph')
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(calls):
            start.record()
            graphed(*inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)
    times = []
    for _ in range(calls):
        clock = time.perf_counter()
        fn(*inputs)
        times.append((time.perf_counter() - clock) * 1e3)
    return statistics.median(times)


def transfer_ms(rgb, xyz, batch: int, workers: int, calls: int, device: torch.device) -> float:
    """Median wall ms to stack `batch` copies of the raw frame (separate arrays, as a dataset's
    are) into host memory and copy them to `device`, as the Detector does."""
    rgbs, xyzs = [rgb.copy() for _ in range(batch)], [xyz.copy() for _ in range(batch)]
    times = []
    for _ in range(calls + 1):   # the first call fills the caching host allocator
        clock = time.perf_counter()
        stack_on_device(rgbs, np.uint8, device, workers)
        stack_on_device(xyzs, np.float32, device, workers)
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - clock) * 1e3)
    return statistics.median(times[1:])


def reference_ms(rgb, xyz, cfg, calls: int) -> dict:
    """Per frame: the numpy reference on the CPU."""
    preprocess(rgb, xyz, cfg)
    times = []
    for _ in range(calls):
        clock = time.perf_counter()
        preprocess(rgb, xyz, cfg)
        times.append((time.perf_counter() - clock) * 1e3)
    return {'numpy reference, per frame': statistics.median(times)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch', type=int, nargs='+', default=[1])
    parser.add_argument('--calls', type=int, default=20)
    parser.add_argument('--no-triton', action='store_true',
                        help='the window searches in torch on CUDA too (no Triton kernels)')
    args = parser.parse_args(argv)
    window_search.use_triton = not args.no_triton
    device = torch.device(args.device)
    cfg = PreprocessConfig()
    rgb, xyz, name = load_frame()
    kept_frame = valid_mask(xyz)
    plane = batched.support_plane_masks(torch.from_numpy(xyz)[None],
                                        torch.from_numpy(kept_frame)[None], cfg)
    kept_frame &= ~plane[0].numpy()
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    searches = ('Triton kernels' if window_search._kernels(device) is not None
                else 'torch')
    print(f'input: {name}; device {device} ({where}); torch threads {torch.get_num_threads()}; '
          f'window searches: {searches}')
    print('| stage | ' + ' | '.join(f'batch {b}: ms per call' for b in args.batch) + ' |')
    print('|---|' + '---|' * len(args.batch))
    for workers in sorted({1, POOL_SIZE}):
        how = ('one thread' if workers == 1 else
               f'{workers} threads above {PARALLEL_BYTES >> 20} MB, else one')
        print(f'| raw frames to the device, {how} | ' + ' | '.join(
            f'{transfer_ms(rgb, xyz, b, workers, args.calls, device):.2f}' for b in args.batch)
            + ' |')
    columns = []
    for batch in args.batch:
        inputs = tuple(torch.from_numpy(np.repeat(a[None], batch, 0)).to(device) for a in (
            rgb, np.nan_to_num(xyz), valid_mask(xyz), kept_frame))
        columns.append({stage: time_ms(fn, inputs, args.calls, device)
                        for stage, fn in stages(cfg)})
    for stage, _ in stages(cfg):
        print(f'| {stage} | ' + ' | '.join(f'{c[stage]:.2f}' for c in columns) + ' |')
    for stage, ms in reference_ms(rgb, xyz, cfg, args.calls).items():
        print(f'| {stage} (batch 1, synchronised) | {ms:.2f} |' + ' |' * (len(args.batch) - 1))


if __name__ == '__main__':
    main()
