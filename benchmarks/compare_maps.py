"""Which anomaly map localises? Compares the candidate 2D and 3D maps of one checkpoint on a
dataset split (not a test; use a synthetic set, never tune on real test samples).

For each candidate (2D: decoder feature distance 'f2', pixel reconstruction error 'pix'; 3D:
decoder feature distance 'f3', Chamfer reconstruction error 'cham'; and products), each map
normalised by its mean over the good validation foreground, smoothed like the Detector does,
prints I-AUROC, P-AUROC, AUPRO@0.3 and the median over anomalous samples of (mean map inside the
defect) / (mean map on the rest of the object).

    .venv/bin/python benchmarks/compare_maps.py CHECKPOINT DATA_ROOT CATEGORY [--dataset synthetic]
"""
import argparse
import sys

import numpy as np
import torch

from dbmr_ros import metrics
from dbmr_ros.data import open_dataset
from dbmr_ros.data.preprocess import preprocess, PreprocessCache, resize_mask
from dbmr_ros.detector import Detector
from dbmr_ros.model.inputs import group_points, prepare
from dbmr_ros.model.point_ops import chamfer_l2
from dbmr_ros.model.grid import gaussian_blur
from dbmr_ros.model.pixels import group_map
from dbmr_ros.model.scoring import patch_map

CANDIDATES = {
    'f2 (paper 2D)': lambda n: n['f2'], 'pix': lambda n: n['pix'],
    'f3 (paper 3D)': lambda n: n['f3'], 'cham': lambda n: n['cham'],
    'f2 * f3 (paper)': lambda n: n['f2'] * n['f3'],
    'pix * f3 (ours)': lambda n: n['pix'] * n['f3'],
    'pix * cham': lambda n: n['pix'] * n['cham'],
}


@torch.no_grad()
def candidate_maps(detector, kind, root, category, split):
    model, cfg, pcfg = detector.model, detector.model.cfg, detector.meta.preprocess
    cache = PreprocessCache(pcfg)
    out = []
    for ref in open_dataset(kind, root, category, split):
        sample = ref.load()
        rgb, xyz = preprocess(sample.rgb, sample.xyz, pcfg, cache.cleaned(ref.xyz_path,
                                                                          sample.xyz))
        inp = prepare(torch.from_numpy(rgb[None]), torch.from_numpy(xyz[None]), cfg.num_points,
                      cfg.group_size)
        groups = group_points(inp, cfg.num_groups, cfg.group_size)
        tokens = model.score_tokens(inp.images, groups)
        valid = inp.valid[0]
        chamfer = chamfer_l2(groups.neighborhoods[0], tokens.reconstructed_groups[0])[None]
        maps = {'f2': patch_map(tokens.patch, cfg.image_size)[0] * valid,
                'f3': group_map(tokens.group, inp, groups)[0],
                'pix': ((inp.images - tokens.reconstruction) ** 2).sum(1)[0] * valid,
                'cham': group_map(chamfer, inp, groups)[0]}
        gt = resize_mask(sample.gt, pcfg) if sample.gt is not None else None
        out.append((maps, valid, gt, sample.label))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint')
    parser.add_argument('data_root')
    parser.add_argument('category')
    parser.add_argument('--dataset', default='synthetic')
    args = parser.parse_args(argv)
    detector = Detector.from_checkpoint(args.checkpoint, 'cpu')
    sigma = detector.model.cfg.smoothing_sigma
    validation = candidate_maps(detector, args.dataset, args.data_root, args.category,
                                'validation')
    test = candidate_maps(detector, args.dataset, args.data_root, args.category, 'test')
    means = {k: float(np.mean([m[k][v].mean() for m, v, _, _ in validation]))
             for k in validation[0][0]}
    print(f'{args.checkpoint} on {args.dataset}/{args.category}/test ({len(test)} samples)')
    print('| map | I-AUROC | P-AUROC | AUPRO@0.3 | defect / rest of object |')
    print('|---|---|---|---|---|')
    for name, combine in CANDIDATES.items():
        fused = [(gaussian_blur(combine({k: m[k] / means[k] for k in m})[None], sigma)[0]
                  * v).numpy() for m, v, _, _ in test]
        labels = [label for _, _, _, label in test]
        gts = [gt for _, _, gt, _ in test]
        ratios = [f[gt & v.numpy()].mean() / f[v.numpy() & ~gt].mean()
                  for f, (_, v, gt, label) in zip(fused, test)
                  if label and (gt & v.numpy()).any()]
        print(f'| {name} | {metrics.image_auroc(labels, [f.max() for f in fused]):.3f} | '
              f'{metrics.pixel_auroc(gts, fused):.3f} | {metrics.au_pro(gts, fused):.3f} | '
              f'{np.median(ratios):.2f} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
