"""How closely the fixed-shape batched preprocessing (the GPU path, `data/preprocess_batched.py`)
keeps the numpy reference's points, frame by frame over a dataset (not a test): check it on
your own recordings before trusting the GPU path's bounds with another sensor.

Per split: the frames, how many the batched path flags as not exact (the Detector redoes those
step by step, so they cost time, not agreement), how many keep exactly the reference's points,
and the largest and mean difference (points kept by one and not the other, as a share of the
reference's kept points) over the frames flagged exact. Runs on the CPU (the same code as on
CUDA; `test_preprocess_batched.py` checks the two agree).

    .venv/bin/python benchmarks/compare_preprocessing.py --data-root ../shared/data/mvtec3d \\
        --category cable_gland [--dataset mvtec3d] [--splits train validation test]
"""
import argparse
import sys

import numpy as np
import torch

from dbmr_ros.data import open_dataset, PreprocessConfig, preprocess_batched
from dbmr_ros.data.preprocess import clean_point_cloud
from dbmr_ros.data.sample import valid_mask


def compare(xyz: np.ndarray, cfg: PreprocessConfig):
    """-> (exact flag, points kept by only one of the two paths, points the reference keeps)."""
    expected = valid_mask(clean_point_cloud(xyz, cfg))
    cleaned, exact = preprocess_batched.clean_point_clouds(torch.from_numpy(xyz)[None], cfg)
    got = valid_mask(cleaned[0].numpy())
    return bool(exact[0]), int((got != expected).sum()), int(expected.sum())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--category', required=True)
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--splits', nargs='+', default=['train', 'validation', 'test'])
    args = parser.parse_args(argv)
    cfg = PreprocessConfig()
    print(f'{args.dataset} {args.category}; {preprocess_batched.__name__} against the numpy '
          f'reference, default preprocessing')
    print('| split | frames | flagged (redone) | identical | largest difference | mean |')
    print('|---|---|---|---|---|---|')
    for split in args.splits:
        refs = open_dataset(args.dataset, args.data_root, args.category, split)
        flagged, shares, identical, worst = [], [], 0, (0.0, 0, '')
        for ref in refs:
            exact, different, kept = compare(ref.load().xyz, cfg)
            if not exact:
                flagged.append(ref.name)
                continue
            share = different / max(kept, 1)
            shares.append(share)
            identical += different == 0
            worst = max(worst, (share, different, ref.name))
        mean = f'{100 * np.mean(shares):.3f} %' if shares else '-'
        print(f'| {split} | {len(refs)} | {len(flagged)} | {identical} | {worst[1]} points, '
              f'{100 * worst[0]:.3f} % ({worst[2] or "-"}) | {mean} |')
        for name in flagged:
            print(f'  flagged: {name}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
