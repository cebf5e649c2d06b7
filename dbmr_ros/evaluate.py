"""dbmr-eval: evaluate a checkpoint on the test split of one or more categories.

Writes metrics.json (I-AUROC, P-AUROC, AUPRO at FPR 0.3/0.1/0.05/0.01 per category, their mean,
and the RGB-only and 3D-only variants), results.md (the paper's layout), ROC/PRO plots and
heatmap overlays. Scores come from the same Detector the ROS node uses; pixel metrics are
computed at each image's own resolution against its unresized ground truth.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Optional

from dbmr_ros.command import run_command
from dbmr_ros.data.datasets import DATASETS, open_dataset
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.files import refuse_existing_output
from dbmr_ros.model.scoring import SCORINGS
from dbmr_ros.report import CategoryResults, overlay_indices, write_evaluation, write_overlay
from dbmr_ros.visualize import display_range


def prepare_output(path, overwrite: bool) -> Path:
    output = refuse_existing_output(path, overwrite, holds='results')
    output.mkdir(parents=True, exist_ok=True)
    return output


def evaluate_category(detector: Detector, kind, root, category, cache: PreprocessCache,
                      overlay_dir: Optional[Path] = None, num_overlays: int = 0, log=print,
                      batch_size: int = 1, split: str = 'test') -> CategoryResults:
    """Score a split of the category (test; dbmr-train: validation, where it holds labelled
    defects), `batch_size` samples per Detector call; `num_overlays` written to overlay_dir."""
    refs = open_dataset(kind, root, category, split)
    results = CategoryResults()
    overlays = set(overlay_indices(len(refs), num_overlays)) if overlay_dir else set()
    for start in range(0, len(refs), batch_size):
        batch = list(enumerate(refs[start:start + batch_size], start))
        samples = [ref.load() for _, ref in batch]
        scored = detector([s.rgb for s in samples], [s.xyz for s in samples],
                          [cache.cleaned(ref.xyz_path, s.xyz)
                           for (_, ref), s in zip(batch, samples)])
        for (i, ref), sample, result in zip(batch, samples, scored):
            results.add(sample.label, sample.gt, result.anomaly_map, result.map_2d,
                        result.map_3d, result.score, result.paper_map, result.paper_score,
                        kind=sample.defect)
            if i in overlays:
                write_overlay(overlay_dir, ref.name, sample.rgb, sample.xyz, sample.gt,
                              result.anomaly_map, display_range(detector.threshold,
                                                                result.anomaly_map),
                              result.score, detector.threshold)
            log(f'{ref.name}: score {result.score:.4f} label {sample.label}')
    return results


def run(args) -> dict:
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f'--batch-size must be at least 1, got {args.batch_size}')
    detector = Detector.from_checkpoint(args.checkpoint, args.device, scoring=args.scoring)
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
        output, collected, {'checkpoint': str(args.checkpoint), 'dataset': args.dataset,
                            'scoring': detector.scoring, 'threshold': detector.threshold,
                            'seconds': time.perf_counter() - started},
        f'{args.dataset}: {Path(args.checkpoint).name}', detector.scoring)
    (output / 'results.md').write_text(table)
    print(table)
    print(f'wrote {output}/metrics.json, results.md, curves_*.png, overlays/')
    return document


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-eval', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True)
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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command('dbmr-eval', lambda: run(args) and None)


if __name__ == '__main__':
    sys.exit(main())
