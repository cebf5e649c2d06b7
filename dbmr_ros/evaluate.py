"""dbmr-eval: evaluate a checkpoint on the test split of one or more categories.

With --selection-sets, one or more checkpoints are instead judged on the selection sets, never
on test samples (`dbmr_ros.training.selection`): the way to compare trained models.

Writes metrics.json (I-AUROC, P-AUROC, AUPRO at FPR 0.3/0.1/0.05/0.01 per category, their mean,
and the RGB-only and 3D-only variants), results.md (the paper's layout), ROC/PRO plots and
heatmap overlays. Scores come from the same Detector the ROS node uses; pixel metrics are
computed at each image's own resolution against its unresized ground truth.
"""
import argparse
import sys
import time
from pathlib import Path

from dbmr_ros.command import run_command
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.data.datasets import DATASETS
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.evaluation import evaluate_category
from dbmr_ros.files import prepare_output
from dbmr_ros.model.scoring import SCORINGS
from dbmr_ros.report import write_evaluation
from dbmr_ros.training.selection import selection_sets, selection_table


def run(args) -> dict:
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f'--batch-size must be at least 1, got {args.batch_size}')
    if args.selection_sets:
        return compare_on_selection_sets(args)
    if len(args.checkpoint) != 1:
        raise ValueError('the test split takes one --checkpoint (several: --selection-sets)')
    checkpoint = args.checkpoint[0]
    detector = Detector.from_checkpoint(checkpoint, args.device, scoring=args.scoring)
    output = prepare_output(args.output, args.overwrite)
    overlay_dir = output / 'overlays'
    overlay_dir.mkdir(exist_ok=True)
    cache = PreprocessCache(detector.meta.preprocess, args.cache_dir)
    collected = {}
    started = time.perf_counter()
    for category in args.category:
        collected[category] = evaluate_category(
            detector, args.dataset, args.data_root, category, cache, overlay_dir,
            args.num_overlays, log=print if args.verbose else (lambda *_: None),
            batch_size=args.batch_size or (8 if detector.device.type == 'cuda' else 1))
    document, table = write_evaluation(
        output, collected, {'checkpoint': str(checkpoint), 'dataset': args.dataset,
                            'scoring': detector.scoring, 'threshold': detector.threshold,
                            'seconds': time.perf_counter() - started},
        f'{args.dataset}: {Path(checkpoint).name}', detector.scoring)
    (output / 'results.md').write_text(table)
    print(table)
    print(f'wrote {output}/metrics.json, results.md, curves_*.png, overlays/')
    return document


def compare_on_selection_sets(args) -> dict:
    """Each checkpoint's selection-set table, printed and written to selection.md."""
    if len(args.category) != 1:
        raise ValueError('--selection-sets judges one --category')
    output = prepare_output(args.output, args.overwrite)
    tables, first_kinds = {}, None
    for checkpoint in args.checkpoint:
        started = time.perf_counter()
        detector = Detector.from_checkpoint(checkpoint, args.device, scoring=args.scoring)
        own_kinds = detector.meta.anomalies or AnomalyConfig()
        first_kinds = first_kinds or own_kinds
        sets = selection_sets(
            detector, args.dataset, args.data_root, args.category[0],
            first_kinds if args.training_kinds == 'first' else own_kinds, args.copies,
            args.unseen_copies, args.seed, PreprocessCache(detector.meta.preprocess,
                                                           args.cache_dir))
        tables[checkpoint] = (
            f'{checkpoint}: {args.category[0]} validation/good with {args.copies} training-kind '
            f'anomalies and {args.unseen_copies} of each unseen kind on each sample '
            f'({time.perf_counter() - started:.0f} s)\n\n{selection_table(sets)}')
        print(tables[checkpoint], flush=True)
    (output / 'selection.md').write_text('\n'.join(tables.values()))
    print(f'wrote {output}/selection.md')
    return tables


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-eval', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True, nargs='+',
                        help='a checkpoint (several with --selection-sets)')
    parser.add_argument('--dataset', required=True, choices=DATASETS)
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--category', required=True, nargs='+', help='one or more categories')
    parser.add_argument('--output', required=True)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--scoring', choices=SCORINGS,
                        help="the scoring of the first rows: 'learned' (scoring head) or "
                        "'paper' (default: the checkpoint's); the paper's rows come always")
    parser.add_argument('--num-overlays', type=int, default=8, help='overlay images per category')
    parser.add_argument('--cache-dir', help='preprocessing cache (default ~/.cache/dbmr_ros)')
    parser.add_argument('--overwrite', action='store_true')
    parser.add_argument('--verbose', action='store_true', help='print every sample score')
    parser.add_argument('--batch-size', type=int, help='samples per network call (default: 8 on '
                        'CUDA; 1 on the CPU, where batches gain nothing and a score equals the '
                        "node's to the last bit)")
    selection = parser.add_argument_group(
        'model selection', 'judge checkpoints on validation/good with synthetic anomalies '
        'instead of the test split')
    selection.add_argument('--selection-sets', action='store_true')
    selection.add_argument('--copies', type=int, default=6,
                           help='training-kind anomalies per validation sample')
    selection.add_argument('--unseen-copies', type=int, default=1,
                           help='anomalies of each unseen kind per validation sample')
    selection.add_argument('--seed', type=int, default=1)
    selection.add_argument('--training-kinds', choices=('own', 'first'), default='own',
                           help="each checkpoint's own synthetic anomaly kinds, or the first "
                           "checkpoint's for all (for checkpoints trained on different kinds)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command('dbmr-eval', lambda: run(args) and None)


if __name__ == '__main__':
    sys.exit(main())
