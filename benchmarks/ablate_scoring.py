"""Ablations of the learned scoring, judged on the selection set only (validation/good plus
synthetic anomalies on it; never test samples): the figures behind docs/design_notes.md.

Each variant is a short dbmr-train run (stage 1 and head) with its own model overrides; the
table gives the selection-set metrics of both scorings at the end of the run, and the network
time per frame of the variant (batch 1, this machine).

    .venv/bin/python benchmarks/ablate_scoring.py --data-root ../shared/data/mvtec3d \
        --category cable_gland --output /tmp/ablation [--epochs 30 --head-epochs 30]
"""
import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from dbmr_ros.detector import Detector
from dbmr_ros.train import main as train_main

VARIANTS = {
    'one repairing pass (default)': {},
    'four masked passes (the paper)': {'score_passes': 4, 'visible_loss_weight': 0.0,
                                       'unmasked_share': 0.0},
    'one pass, head without token context': {'head_context': False},
}
SELECTION = re.compile(r'selection set .*?: learned (.*?); paper (.*)$')


def last_selection(log: str) -> dict:
    line = [m for m in (SELECTION.search(x) for x in log.splitlines()) if m][-1]
    return {scoring: dict(zip(part.split()[::2], map(float, part.split()[1::2])))
            for scoring, part in zip(('learned', 'paper'), line.groups())}


def network_ms(checkpoint: Path, data_root: str, category: str, frames: int = 10) -> float:
    from dbmr_ros.data import open_dataset
    detector = Detector.from_checkpoint(checkpoint, 'cpu')
    sample = open_dataset('mvtec3d', data_root, category, 'validation')[0].load()
    cleaned = detector.clean(sample.xyz)
    times = []
    for _ in range(frames + 2):
        result = detector(sample.rgb, sample.xyz, cleaned)
        times.append(result.timings_ms['network'] + result.timings_ms['scoring'])
    return float(np.median(times[2:]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--category', default='cable_gland')
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--output', required=True)
    parser.add_argument('--epochs', type=int, default=30)
    parser.add_argument('--head-epochs', type=int, default=30)
    args = parser.parse_args(argv)
    output = Path(args.output)
    rows = []
    for index, (name, overrides) in enumerate(VARIANTS.items()):
        run = output / f'variant_{index}'
        config = output / f'variant_{index}.yaml'
        output.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump({
            'preset': 'tiny', 'model': overrides, 'epochs': args.epochs,
            'head_epochs': args.head_epochs, 'eval_every': 0, 'log_images_every': 0}))
        started = time.perf_counter()
        if train_main(['--dataset', args.dataset, '--data-root', args.data_root, '--category',
                       args.category, '--output', str(run), '--config', str(config),
                       '--device', 'cpu', '--overwrite']) != 0:
            return 1
        minutes = (time.perf_counter() - started) / 60
        selection = last_selection((run / 'train.log').read_text())
        rows.append((name, selection, network_ms(run / 'model.safetensors', args.data_root,
                                                 args.category), minutes))
    print(f'\nselection set (validation + synthetic anomalies), {args.epochs} + '
          f'{args.head_epochs} epochs\n')
    print('| variant | learned I-AUROC / P-AUROC / AUPRO@0.3 | paper I-AUROC / P-AUROC / '
          'AUPRO@0.3 | network + scoring ms/frame | training min |')
    print('|---|---|---|---|---|')
    for name, selection, ms, minutes in rows:
        cells = [' / '.join(f'{selection[s][k]:.3f}' for k in ('i_auroc', 'p_auroc', 'aupro@0.3'))
                 for s in ('learned', 'paper')]
        print(f'| {name} | {cells[0]} | {cells[1]} | {ms:.1f} | {minutes:.1f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
