"""How visible a synthetic 3D displacement is in the surface normals (not a test).

On good parts at model size (validation split, never test samples): the point spacing, how much
neighbouring normals differ on the clean surface (the noise a bump must beat), and how many of a
displaced region's pixels tilt their normal by more than 10 degrees, with the normals computed
from the raw cloud and from the cloud smoothed by each `--sigma` (the head's
`normal_smoothing`). Displacements as training draws them, 3D-only and never removals;
`--relief-share 1` makes each a foreign fine relief where it changes the part visibly (the
others keep their plateau, and its figure).

    .venv/bin/python benchmarks/displacement_signal.py --data-root ../shared/data/mvtec3d \\
        --category cable_gland [--sigma 1 1.5 2] [--relief-share 1]
"""
import argparse
import sys

import numpy as np
import torch

from dbmr_ros.data.anomalies import AnomalyConfig, synthesize
from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess import PreprocessCache, PreprocessConfig
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.model.grid import smoothed_cloud, surface_normals


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(torch.acos((a * b).sum(-1).clamp(-1, 1)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--category', required=True)
    parser.add_argument('--sigma', type=float, nargs='+', default=[1.0, 1.5, 2.0])
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--relief-share', type=float, default=0.0,
                        help='share of the regions given a foreign fine relief (anomalies)')
    args = parser.parse_args(argv)
    pcfg = PreprocessConfig()
    rgb, xyz = (torch.from_numpy(a) for a in load_split(
        args.dataset, args.data_root, args.category, 'validation', pcfg, PreprocessCache(pcfg)))
    valid = valid_mask(xyz)
    pairs = valid[:, :, 1:] & valid[:, :, :-1]
    spacing = (xyz[:, :, 1:] - xyz[:, :, :-1]).norm(dim=-1)[pairs]
    print(f'{len(xyz)} validation parts; point spacing (median) '
          f'{1000 * float(spacing.median()):.2f} mm')
    kinds = AnomalyConfig(modality_weights=(0.0, 1.0, 0.0), removal_share=0.0,
                          relief_share=args.relief_share)
    made = synthesize(rgb, xyz, kinds, torch.Generator().manual_seed(args.seed), probability=1.0)
    moved = (made.xyz - xyz).norm(dim=-1)
    print('displacement in the region, median per part (mm): '
          + ' '.join(f'{1000 * float(moved[i][made.mask[i]].median()):.1f}'
                     for i in range(len(xyz))))
    print('| normals from | neighbour angle on good parts q50 / q90 / q99 (deg) | '
          'region pixels tilted > 10 deg |\n|---|---|---|')
    for sigma in [0.0] + args.sigma:
        clean = surface_normals(smoothed_cloud(xyz, valid, sigma), valid)
        bumped = surface_normals(smoothed_cloud(made.xyz, valid_mask(made.xyz), sigma),
                                 valid_mask(made.xyz))
        noise = angle_deg(clean[:, :, 1:], clean[:, :, :-1])[pairs].numpy()
        tilted = np.mean([float((angle_deg(clean[i], bumped[i])[made.mask[i]] > 10).float()
                                .mean()) for i in range(len(xyz))])
        source = 'raw cloud' if sigma == 0 else f'cloud smoothed by {sigma:g} px'
        quantiles = np.quantile(noise, [0.5, 0.9, 0.99])
        print(f'| {source} | ' + ' / '.join(f'{q:.1f}' for q in quantiles)
              + f' | {100 * tilted:.0f} % |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
