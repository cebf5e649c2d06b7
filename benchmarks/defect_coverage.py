"""How much of a dataset's ground-truth defect area has any 3D point (not a test).

A defect pixel without a point (missing material, or the sensor saw nothing there) cannot be
scored from geometry, and background removal may drop more. Prints, over the test samples with
a defect: the share of ground-truth pixels without a point in the raw clouds and after
`clean_point_cloud` with the given preprocessing config (the cable_gland figure in
docs/results.md).

    .venv/bin/python benchmarks/defect_coverage.py --dataset mvtec3d \
        --data-root ../shared/data/mvtec3d --category cable_gland [--config config/train_tiny.yaml]
"""
import argparse
import sys
from pathlib import Path


from dbmr_ros.data import open_dataset
from dbmr_ros.data.preprocess import clean_point_cloud
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--data-root', default=str(REPO.parent / 'shared' / 'data' / 'mvtec3d'))
    parser.add_argument('--category', default='cable_gland')
    parser.add_argument('--split', default='test')
    parser.add_argument('--config', default=str(REPO / 'config' / 'train_tiny.yaml'))
    args = parser.parse_args(argv)
    cfg = TrainConfig.load(args.config)
    pcfg = cfg.preprocess_config(cfg.model_config().image_size)
    defect = raw_missing = cleaned_missing = samples = 0
    for ref in open_dataset(args.dataset, args.data_root, args.category, args.split):
        sample = ref.load()
        if sample.gt is None or not sample.gt.any():
            continue
        gt = sample.gt > 0
        samples += 1
        defect += int(gt.sum())
        raw_missing += int((gt & ~valid_mask(sample.xyz)).sum())
        cleaned_missing += int((gt & ~valid_mask(clean_point_cloud(sample.xyz, pcfg))).sum())
    if not defect:
        print('no test sample with a defect')
        return 1
    print(f'{args.dataset}/{args.category}/{args.split}: {samples} samples with a defect, '
          f'{defect} ground-truth pixels; without a 3D point: raw clouds '
          f'{100 * raw_missing / defect:.1f} %, after background removal '
          f'{100 * cleaned_missing / defect:.1f} %')
    return 0


if __name__ == '__main__':
    sys.exit(main())
