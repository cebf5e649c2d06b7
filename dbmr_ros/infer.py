"""dbmr-infer: score every rgb/xyz pair in a folder with a checkpoint.

Pairs are found as MVTec 3D-AD style `<dir>/rgb/NAME.png` + `<dir>/xyz/NAME.tiff` (recursively)
or as `NAME.png` + `NAME.tiff` side by side. For each pair it writes `<NAME>_map.npy` (anomaly map
at the input resolution, float32) and `<NAME>_heatmap.png`, and `scores.csv` for all of them.
"""
import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from dbmr_ros.command import run_command
from dbmr_ros.data.io import read_rgb, read_xyz, write_rgb
from dbmr_ros.detector import Detector
from dbmr_ros.files import prepare_output
from dbmr_ros.model.scoring import SCORINGS
from dbmr_ros.visualize import display_range, overlay

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')


def find_pairs(root: Path):
    """[(name, rgb_path, xyz_path)] sorted by name."""
    pairs = {}
    for xyz_path in sorted(root.rglob('*.tiff')) + sorted(root.rglob('*.tif')):
        candidates = [xyz_path.with_suffix(s) for s in IMAGE_SUFFIXES]
        if xyz_path.parent.name == 'xyz':
            candidates = [xyz_path.parent.parent / 'rgb' / (xyz_path.stem + s)
                          for s in IMAGE_SUFFIXES] + candidates
        rgb_path = next((c for c in candidates if c.exists()), None)
        if rgb_path is None:
            continue
        relative = xyz_path.relative_to(root).with_suffix('')
        parts = [p for p in relative.parts if p != 'xyz']
        pairs['_'.join(parts)] = (rgb_path, xyz_path)
    return [(name, *paths) for name, paths in sorted(pairs.items())]


def run(args) -> int:
    root = Path(args.input)
    if not root.is_dir():
        raise FileNotFoundError(f'input folder {root} does not exist')
    pairs = find_pairs(root)
    if not pairs:
        raise FileNotFoundError(f'no rgb/xyz pairs (NAME.png + NAME.tiff, or rgb/ + xyz/) '
                                f'under {root}')
    detector = Detector.from_checkpoint(args.checkpoint, args.device, scoring=args.scoring)
    output = prepare_output(args.output, args.overwrite)
    with open(output / 'scores.csv', 'w', newline='') as handle:
        writer = csv.writer(handle)
        writer.writerow(['name', 'score', 'is_anomalous', 'rgb', 'xyz'])
        for name, rgb_path, xyz_path in pairs:
            rgb, xyz = read_rgb(rgb_path), read_xyz(xyz_path)
            result = detector(rgb, xyz)
            np.save(output / f'{name}_map.npy', result.anomaly_map)
            write_rgb(output / f'{name}_heatmap.png', overlay(
                rgb, result.anomaly_map, display_range(detector.threshold, result.anomaly_map)))
            writer.writerow([name, f'{result.score:.6f}', int(result.is_anomalous), rgb_path,
                             xyz_path])
            print(f'{name}: {result.score:.4f}{" ANOMALOUS" if result.is_anomalous else ""}')
    print(f'wrote {len(pairs)} results to {output}')
    return len(pairs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='dbmr-infer', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True)
    parser.add_argument('--input', required=True, help='folder with rgb/xyz pairs')
    parser.add_argument('--output', required=True)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--scoring', choices=SCORINGS,
                        help="'learned' (scoring head) or 'paper' (default: the checkpoint's)")
    parser.add_argument('--overwrite', action='store_true')
    args = parser.parse_args(argv)
    return run_command('dbmr-infer', lambda: run(args) and None)


if __name__ == '__main__':
    sys.exit(main())
