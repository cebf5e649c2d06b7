"""Trained checkpoints judged on two selection sets, never on test samples: validation/good with
the training's kinds of synthetic anomalies on it (what dbmr-train logs), and with defect kinds
that training never draws (`data/unseen_defects.py`: bends, cuts, scratches, craters, shaved
facets, stains), which asks whether a map generalises beyond what it was taught; and, where the
validation split holds labelled defects (real ones: dbmr-train's `real_*`), those against the
good validation samples at input resolution.

One block per checkpoint: pooled I-AUROC / P-AUROC / AUPRO@0.3 / AUPRO@0.1 of the learned and the
paper's scoring on each set, then the learned map per kind.

    .venv/bin/python benchmarks/selection_sets.py CHECKPOINT [CHECKPOINT ...] \
        --data-root ../shared/data/mvtec3d --category cable_gland [--copies 6] \
        [--training-kinds first]
"""
import argparse
import sys
import time

from dbmr_ros.calibration import synthetic_results, unseen_results
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.data.prepared import labelled_defects, load_split
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.evaluate import evaluate_category

METRICS = ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1')


def judge(detector: Detector, rgb, xyz, kinds: AnomalyConfig, copies: int, unseen: int,
          seed: int) -> dict:
    """{set name: CategoryResults} for a calibrated detector and good model-size samples; the
    first set draws `kinds` of synthetic anomaly."""
    return {'training kinds': synthetic_results(detector, rgb, xyz, kinds, seed, copies),
            'unseen kinds': unseen_results(detector, rgb, xyz, seed, unseen)}


def _row(label: str, values: dict, keys=METRICS) -> str:
    cells = ['-' if values.get(k) is None else f'{values[k]:.3f}' for k in keys]
    return f'| {label} | ' + ' | '.join(cells) + ' |'


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoints', nargs='+')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--category', required=True)
    parser.add_argument('--copies', type=int, default=6,
                        help='training-kind anomalies per validation sample')
    parser.add_argument('--unseen-copies', type=int, default=1,
                        help='each unseen kind per validation sample')
    parser.add_argument('--seed', type=int, default=1)
    parser.add_argument('--training-kinds', choices=('own', 'first'), default='own',
                        help="the first set's synthetic anomalies: each checkpoint's own training "
                             "kinds, or the first checkpoint's for all (one set for checkpoints "
                             'trained on different kinds)')
    args = parser.parse_args(argv)
    first_kinds = None
    for checkpoint in args.checkpoints:
        started = time.perf_counter()
        detector = Detector.from_checkpoint(checkpoint, 'cpu')
        own_kinds = detector.meta.anomalies or AnomalyConfig()
        first_kinds = first_kinds or own_kinds
        pcfg = detector.meta.preprocess
        cache = PreprocessCache(pcfg)
        rgb, xyz = load_split(args.dataset, args.data_root, args.category, 'validation', pcfg,
                              cache)
        kinds = first_kinds if args.training_kinds == 'first' else own_kinds
        sets = judge(detector, rgb, xyz, kinds, args.copies, args.unseen_copies, args.seed)
        if labelled_defects(args.dataset, args.data_root, args.category):
            sets['real defects'] = evaluate_category(
                detector, args.dataset, args.data_root, args.category, cache,
                log=lambda *_: None, split='validation')
        print(f'\n{checkpoint}: {args.category} validation/good ({len(rgb)}) with '
              f'{args.copies} training-kind anomalies and {args.unseen_copies} of each unseen '
              'kind on each sample')
        print('| set, scoring | I-AUROC | P-AUROC | AUPRO@0.3 | AUPRO@0.1 |')
        print('|---|---|---|---|---|')
        for name, results in sets.items():
            pooled = results.compute(variants=('fused', 'paper'))
            print(_row(f'{name}, learned', pooled))
            print(_row(f'{name}, paper', pooled['paper']))
        for name, results in sets.items():
            for kind, values in results.compute_by_kind(variants=('fused',)).items():
                print(_row(f'{name}: {kind}, learned', values))
        print(f'({time.perf_counter() - started:.0f} s)', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
