"""Inference-time settings of a trained checkpoint, judged on the selection set only
(validation/good plus synthetic anomalies on it, as dbmr-train selects; never test samples).

Settings that need no retraining are the model config's INFERENCE_FIELDS (the maps' smoothing,
the learned map's margin around the part, the number of scoring passes, the shape prior's late
fusion, the head's views); each `--set
NAME=V1,V2,...` gives one row per value, the other fields at the checkpoint's (or `--fix
NAME=VALUE`'s), with the selection-set I-AUROC, P-AUROC and AUPRO@0.3 of both scorings;
`--unseen-copies N` adds both scorings on the second selection set (N of each defect kind that
training never draws on every validation sample, `data/unseen_defects.py`). A chosen value is
applied to a checkpoint with `dbmr-calibrate --set NAME=VALUE`.

    .venv/bin/python benchmarks/sweep_inference.py CHECKPOINT --data-root ../shared/data/mvtec3d \
        --category cable_gland --set smoothing_sigma=1,2,4 [--fix map_margin=16] [--copies 6] \
        [--unseen-copies 3] [--per-kind]

`--per-kind` adds the learned map's AUPRO@0.3 per kind of synthetic defect (each against all
good samples), on both sets: whether a setting trades one kind for another.
"""
import argparse
import dataclasses
import sys

from dbmr_ros.calibrate import one_inference_setting
from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.model.config import parse_inference_setting
from dbmr_ros.resources import share_dir
from dbmr_ros.train import evaluate_and_calibrate
from dbmr_ros.training.config import TrainConfig


def parse_setting(text: str):
    try:
        return parse_inference_setting(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint')
    parser.add_argument('--data-root', required=True)
    parser.add_argument('--dataset', default='mvtec3d')
    parser.add_argument('--category', required=True)
    parser.add_argument('--set', dest='settings', type=parse_setting, action='append',
                        required=True, help='NAME=V1,V2,... (repeatable)')
    parser.add_argument('--config', default=str(share_dir() / 'config' / 'train_tiny.yaml'),
                        help='training config: its synthetic anomalies and threshold rule')
    parser.add_argument('--fix', dest='fixed', type=one_inference_setting, action='append',
                        default=[],
                        help='NAME=VALUE held in every row instead of the checkpoint\'s '
                             '(repeatable)')
    parser.add_argument('--copies', type=int, default=None,
                        help='synthetic anomalies per validation sample (default: the '
                             "config's calibration_copies; more copies, steadier figures)")
    parser.add_argument('--unseen-copies', type=int, default=0,
                        help='each unseen defect kind per validation sample (default 0: the '
                             'second selection set left out)')
    parser.add_argument('--per-kind', action='store_true',
                        help="also the learned map's AUPRO@0.3 per kind of synthetic defect")
    args = parser.parse_args(argv)
    detector = Detector.from_checkpoint(args.checkpoint, 'cpu')
    trained = detector.model.cfg
    base = dataclasses.replace(trained, **dict(args.fixed))
    train_cfg = TrainConfig.load(args.config)
    if args.copies is not None:
        train_cfg = dataclasses.replace(train_cfg, calibration_copies=args.copies)
    pcfg = detector.meta.preprocess
    val = load_split(args.dataset, args.data_root, args.category, 'validation', pcfg,
                     PreprocessCache(pcfg))
    print(f'{args.checkpoint}: selection set = {args.category} validation/good '
          f'({len(val[0])}) + {train_cfg.calibration_copies} synthetic anomalies on each'
          + ''.join(f', {name}={value}' for name, value in args.fixed))
    columns = ['learned I-AUROC', 'P-AUROC', 'AUPRO@0.3', 'paper I-AUROC', 'P-AUROC',
               'AUPRO@0.3']
    if args.unseen_copies:
        print(f'the unseen-kind set: {args.unseen_copies} of each kind on each sample')
        columns += [f'unseen {c}' if c.endswith('I-AUROC') else c for c in columns]
    print('| setting | ' + ' | '.join(columns) + ' |')
    print('|---' * (len(columns) + 1) + '|')
    for name, values in args.settings:
        for value in values:
            detector.model.cfg = dataclasses.replace(base, **{name: value})
            meta = dataclasses.replace(detector.meta, model=detector.model.cfg)
            _, metrics = evaluate_and_calibrate(detector.model, meta, detector.device, val,
                                                train_cfg, args.unseen_copies)
            sets = ['learned', 'paper'] + (['unseen_learned', 'unseen_paper']
                                           if args.unseen_copies else [])
            # (A scoring none of whose unseen figures is defined is left out: '-'.)
            cells = [f'{metrics[s][k]:.4f}' if k in metrics.get(s, {}) else '-' for s in sets
                     for k in ('i_auroc', 'p_auroc', 'aupro@0.3')]
            marker = ' (trained)' if value == getattr(trained, name) else ''
            print(f'| {name}={value}{marker} | ' + ' | '.join(cells) + ' |', flush=True)
            if args.per_kind:
                print(f'  {name}={value}, learned AUPRO@0.3 per kind: ' + ', '.join(
                    f"{key.replace('learned_', '')} {figures['aupro@0.3']:.3f}"
                    for key, figures in metrics.items()
                    if 'learned_' in key and 'aupro@0.3' in figures), flush=True)
    detector.model.cfg = trained
    return 0


if __name__ == '__main__':
    sys.exit(main())
