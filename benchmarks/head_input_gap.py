"""Does the scoring head see calmer inputs on the parts it trained on than on unseen good parts?

The head trains on the training parts, through the network and the shape prior that were
fitted on those very parts. Had either memorised them, the head would learn what a good
region looks like from inputs calmer than any new part gives, and fire on new good parts (the
leakage that stacking in machine learning avoids by fitting on other folds). This prints, for
the good training parts and the unseen good validation parts, each head input that the network
or the prior computes (the paper's normalised 2D and 3D maps, the prior's channel) and the
learned map, on the part: mean and quantiles, and the image score. A coreset prior holds the
training parts' own patches, so the Detector's maps of a training part are calmer than of a new
part for that reason alone; the rows "own entries left out" make the training parts' maps from
the prior their head trained with (for the validation parts, the Detector's maps again), so
that they show the head's own fit. Test samples never enter.

    .venv/bin/python benchmarks/head_input_gap.py CHECKPOINT --data-root ../shared/data/mvtec3d \\
        --category cable_gland [--samples 23]
"""
import argparse
import sys

import numpy as np
import torch

from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.model.head import input_channels
from dbmr_ros.model.inputs import group_points, prepare
from dbmr_ros.model.scoring import anomaly_maps, head_features, shape_prior_map

QUANTILES = (0.5, 0.9, 0.99)


@torch.inference_mode()
def split_figures(detector: Detector, rgb: np.ndarray, xyz: np.ndarray, training: bool,
                  batch_size: int = 8) -> dict:
    """{name: values on the part (1-D)} for the network's and the prior's head inputs, the
    learned map, and the image scores. `training`: the samples are the training parts in
    order, and the prior's channel is what the head's training reads for them (a coreset
    leaving each part's own entries out); the learned map stays the Detector's."""
    model, cfg = detector.model, detector.model.cfg
    channels = input_channels(model.shape_prior is not None, cfg.head_points)
    names = [name for name, _ in channels]
    # The channel where each input starts.
    first = dict(zip(names, np.cumsum([0] + [count for _, count in channels])))
    values = {name: [] for name in ('map_2d', 'map_3d', 'shape_prior', 'learned map',
                                    'image score', 'learned map, own entries left out',
                                    'image score, own entries left out')}
    for start in range(0, len(rgb), batch_size):
        rgb_t, xyz_t = (torch.from_numpy(a[start:start + batch_size]).to(detector.device)
                        for a in (rgb, xyz))
        inp = prepare(rgb_t, xyz_t, cfg.num_points, cfg.group_size)
        groups = group_points(inp, cfg.num_groups, cfg.group_size)
        tokens = model.score_tokens(inp.images, groups)
        stats, shape_map = detector.meta.calibration.stats, shape_prior_map(model, inp)
        head_shape_map = (shape_prior_map(model, inp, torch.arange(start, start + len(rgb_t)))
                          if training else shape_map)
        features = head_features(model, inp, groups, tokens, stats, head_shape_map)
        part = inp.valid
        values['map_2d'].append(features.map_2d[part])
        values['map_3d'].append(features.map_3d[part])
        if 'shape_prior' in names:
            values['shape_prior'].append(features.inputs[:, first['shape_prior']][part])
        # The same network pass: the maps the Detector returns for these samples.
        maps = anomaly_maps(model, inp, groups, tokens, stats, 'learned', shape_map)
        values['learned map'].append(maps.anomaly[part])
        values['image score'].append(maps.score)
        # A coreset holds the training parts' own patches, so the Detector's maps of them are
        # calmer than of any new part for that reason alone; the head's own fit shows in the
        # maps made from the prior it trained with (for unseen parts the same as above).
        left_out = (anomaly_maps(model, inp, groups, tokens, stats, 'learned', head_shape_map)
                    if training else maps)
        values['learned map, own entries left out'].append(left_out.anomaly[part])
        values['image score, own entries left out'].append(left_out.score)
    return {name: torch.cat(v).float().cpu().numpy() for name, v in values.items() if v}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint')
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--category', default='cable_gland')
    parser.add_argument('--samples', type=int, default=23,
                        help='parts per split (the first ones; validation has 23)')
    parser.add_argument('--device', default='cpu')
    args = parser.parse_args(argv)
    detector = Detector.from_checkpoint(args.checkpoint, args.device)
    cache = PreprocessCache(detector.meta.preprocess)
    print('| split | input | mean | ' + ' | '.join(f'{int(q * 100)} %' for q in QUANTILES)
          + ' |\n|---|---|---|' + '---|' * len(QUANTILES))
    for split in ('train', 'validation'):
        rgb, xyz = load_split(args.dataset, args.data_root, args.category, split,
                              detector.meta.preprocess, cache)
        figures = split_figures(detector, rgb[:args.samples], xyz[:args.samples],
                                split == 'train')
        for name, values in figures.items():
            print(f'| {split} | {name} | {values.mean():.3f} | '
                  + ' | '.join(f'{q:.3f}' for q in np.quantile(values, QUANTILES)) + ' |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
