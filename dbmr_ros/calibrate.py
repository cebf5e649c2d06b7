"""dbmr-calibrate: recalibrate a trained checkpoint on new good samples, without retraining.

For a new lighting, camera or line: fits the normalisation statistics and every scoring's
threshold on the given good samples plus synthetic anomalies on them (`dbmr_ros.calibration`),
and writes a new checkpoint with the same weights. `--set NAME=VALUE` changes an inference
setting (the model config's INFERENCE_FIELDS: map smoothing, the learned map's margin) in the
copy, whose thresholds are then fitted for it.
The input checkpoint is never modified.
"""
import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

from dbmr_ros import calibration
from dbmr_ros.checkpoint import build_model, save_checkpoint
from dbmr_ros.command import run_command
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.data.datasets import DATASETS
from dbmr_ros.data.io import read_rgb, read_xyz
from dbmr_ros.data.preprocess import preprocess
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.devices import resolve_device
from dbmr_ros.files import refuse_existing_output
from dbmr_ros.infer import find_pairs
from dbmr_ros.model.config import INFERENCE_FIELDS, parse_inference_setting
from dbmr_ros.data.prepared import load_split


def good_samples(args, detector: Detector):
    """Model-size (rgb, xyz) arrays of the good samples, and a description of them."""
    cache = PreprocessCache(detector.meta.preprocess, args.cache_dir)
    if args.good:
        pairs = find_pairs(Path(args.good))
        if not pairs:
            raise FileNotFoundError(f'no rgb/xyz pairs (NAME.png + NAME.tiff, or rgb/ + xyz/) '
                                    f'under {args.good}')
        prepared = [preprocess(read_rgb(rgb), xyz, detector.meta.preprocess,
                               cache.cleaned(xyz_path, xyz))
                    for _, rgb, xyz_path in pairs for xyz in [read_xyz(xyz_path)]]
        return (np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared]),
                f'{len(pairs)} good samples in {args.good}')
    if not (args.dataset and args.data_root and args.category):
        raise ValueError('give --good FOLDER, or --dataset, --data-root and --category')
    rgb, xyz = load_split(args.dataset, args.data_root, args.category, args.split,
                          detector.meta.preprocess, cache)
    return rgb, xyz, f'{args.dataset}/{args.category} {args.split} ({len(rgb)} samples)'


def run(args) -> calibration.Calibration:
    source, target = Path(args.checkpoint), Path(args.output)
    refuse_existing_output(target, args.overwrite, holds='a checkpoint')
    detector = _uncalibrated(source, args.device, dict(args.settings))
    rgb, xyz, described = good_samples(args, detector)
    anomalies = detector.meta.anomalies or AnomalyConfig()
    rule = calibration.ThresholdRule(args.rule, args.quantile, args.margin)
    fitted, results = calibration.fit(
        detector, rgb, xyz, anomalies, rule, seed=args.seed, copies=args.copies,
        fitted_on=f'{described} and {args.copies} synthetic anomalies on each')
    save_checkpoint(target, detector.model.state_dict(),
                    dataclasses.replace(detector.meta, calibration=fitted))
    computed = results.compute()
    for scoring, entry in fitted.thresholds.items():
        row = computed if scoring == detector.scoring else computed['paper']
        print(f'{scoring}: threshold {entry.value:.6g} ({entry.rule}); on the good + synthetic '
              f'set: I-AUROC {row["i_auroc"]:.3f}, P-AUROC {row["p_auroc"]:.3f}, AUPRO@0.3 '
              f'{row["aupro@0.3"]:.3f}')
    print(f'wrote {target}')
    return fitted


def _uncalibrated(path, device, settings: dict) -> Detector:
    """The checkpoint's Detector with `settings` (inference fields) applied and without its
    calibration (which may be for another score definition: recalibrating is how that is
    fixed)."""
    target = resolve_device(device)
    model, meta = build_model(path, target)
    model.cfg = dataclasses.replace(model.cfg, **settings)
    meta = dataclasses.replace(meta, model=model.cfg, calibration=calibration.Calibration())
    return Detector(model, meta, target, scoring='learned')


def one_inference_setting(text: str):
    """argparse type of a NAME=VALUE inference setting (--set): -> (NAME, typed VALUE)."""
    try:
        return parse_inference_setting(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-calibrate', description=__doc__.split('\n')[0])
    parser.add_argument('--checkpoint', required=True, help='trained model (.safetensors)')
    parser.add_argument('--output', required=True, help='recalibrated copy to write')
    parser.add_argument('--good', help='folder of good rgb/xyz pairs (as dbmr-infer reads)')
    parser.add_argument('--dataset', choices=DATASETS, help='or a dataset split of good samples')
    parser.add_argument('--data-root')
    parser.add_argument('--category')
    parser.add_argument('--split', default='validation', help='default: validation')
    parser.add_argument('--rule', default='balanced', choices=calibration.RULES,
                        help='threshold rule (default: balanced accuracy between good and '
                        'synthetic anomalous scores)')
    parser.add_argument('--quantile', type=float, default=1.0, help='good-quantile rule')
    parser.add_argument('--margin', type=float, default=1.0, help='good-quantile rule')
    parser.add_argument('--set', dest='settings', type=one_inference_setting, action='append',
                        default=[], metavar='NAME=VALUE',
                        help=f'inference setting for the copy, one of {INFERENCE_FIELDS} '
                             '(repeatable)')
    parser.add_argument('--copies', type=int, default=2,
                        help='synthetic anomalies per good sample (default 2)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--device', default='auto')
    parser.add_argument('--cache-dir', help='preprocessing cache (default ~/.cache/dbmr_ros)')
    parser.add_argument('--overwrite', action='store_true', help='replace --output if it exists')
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command('dbmr-calibrate', lambda: run(args) and None)


if __name__ == '__main__':
    sys.exit(main())
