"""Where a Detector call spends its time, op by op (not a test): torch.profiler over a few
calls of a random-weight preset on the bench_model frame.

Prints the ops with the most device time (CUDA) or CPU time (CPU), the kernel launches and the
synchronisations per call: the figures that say whether the GPU waits on Python, on copies or
on its own work.

    .venv/bin/python benchmarks/profile_detector.py [--preset tiny] [--device cuda]
        [--batch N] [--calls 5] [--rows 25] [--sort device|cpu] [--trace trace.json]
"""
import argparse
import sys

import torch
from torch.profiler import profile, ProfilerActivity

from bench_model import load_frame, random_detector


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--preset', default='tiny')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--calls', type=int, default=5)
    parser.add_argument('--rows', type=int, default=25)
    parser.add_argument('--sort', choices=('device', 'cpu'), default='device',
                        help="ops by device time (CUDA's, else the CPU's) or by CPU time (what "
                             'the host spends launching, copying and waiting)')
    parser.add_argument('--trace', help='write a Chrome trace here')
    args = parser.parse_args(argv)
    rgb, xyz, source = load_frame()
    detector = random_detector(args.preset, args.device)
    rgb_in, xyz_in = ([rgb] * args.batch, [xyz] * args.batch) if args.batch > 1 else (rgb, xyz)
    for _ in range(3):  # warm-up: graphs recorded, kernels loaded, allocator filled
        detector(rgb_in, xyz_in)
    cuda = detector.device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(args.calls):
            detector(rgb_in, xyz_in)
        if cuda:
            torch.cuda.synchronize(detector.device)
    events = prof.key_averages()
    sort = 'self_cuda_time_total' if cuda and args.sort == 'device' else 'self_cpu_time_total'
    print(f'{args.preset}, {source}, device {detector.device}, batch {args.batch}, '
          f'{args.calls} calls; sorted by {sort}')
    print(events.table(sort_by=sort, row_limit=args.rows, max_name_column_width=60))
    launch_keys = ('cudaLaunchKernel', 'cuLaunchKernel', 'cudaLaunchKernelExC')
    launches = sum(e.count for e in events if e.key in launch_keys)
    syncs = sum(e.count for e in events
                if 'Synchronize' in e.key or e.key in ('aten::item', 'aten::_local_scalar_dense'))
    print(f'per call: {launches / args.calls:.0f} kernel launches, '
          f'{syncs / args.calls:.0f} synchronising calls (item / synchronize)')
    if args.trace:
        prof.export_chrome_trace(args.trace)
    return 0


if __name__ == '__main__':
    sys.exit(main())
