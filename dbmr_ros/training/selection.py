"""Model selection without test samples: a checkpoint judged on validation/good with synthetic
anomalies on it (the training's kinds, and kinds training never draws), and on the validation
split's labelled defects where it holds real ones. dbmr-train calibrates and logs these at every
selection; `dbmr-eval --selection-sets` compares trained checkpoints on them."""
import dataclasses

from dbmr_ros import calibration
from dbmr_ros.checkpoint import CheckpointMeta
from dbmr_ros.data.anomalies import AnomalyConfig
from dbmr_ros.data.prepared import labelled_defects, load_split
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.evaluation import evaluate_category
from dbmr_ros.training.config import TrainConfig

SELECTION_METRICS = ('i_auroc', 'p_auroc', 'aupro@0.3')


def evaluate_and_calibrate(model, meta: CheckpointMeta, device, val, cfg: TrainConfig,
                           unseen_copies: int = 0):
    """Calibration on validation/good + synthetic anomalies on it, and that selection set's
    metrics per scoring and, for the learned one, per kind of synthetic defect; with
    `unseen_copies`, also both scorings on that many of each defect kind that training never
    draws on every validation sample, the learned map also per such kind:
    (calibrated meta, {'learned' | 'paper' | 'learned_<kind>' | 'unseen_<scoring>' |
    'unseen_learned_<kind>': metrics})."""
    detector = Detector(model, dataclasses.replace(meta, calibration=calibration.Calibration()),
                        device)
    fitted, results = calibration.fit(
        detector, val[0], val[1], cfg.anomaly_config(), cfg.threshold_rule_config(),
        seed=cfg.seed + 1, copies=cfg.calibration_copies,
        fitted_on=f'{meta.dataset}/{meta.category} validation/good ({len(val[0])} samples) '
                  f'and {cfg.calibration_copies} synthetic anomalies on each')
    computed = results.compute()
    selection = {'learned': {k: computed[k] for k in SELECTION_METRICS},
                 'paper': {k: computed['paper'][k] for k in SELECTION_METRICS}}
    # The learned map per kind of synthetic defect (against all good samples): the pooled
    # figures hide a kind that it misses. Its map alone: each other one costs seconds.
    selection.update(_per_kind('learned', results))
    if unseen_copies:
        scorer = Detector(model, dataclasses.replace(meta, calibration=fitted), device)
        unseen = calibration.unseen_results(scorer, *val, seed=cfg.seed + 2,
                                            copies=unseen_copies)
        # A scoring is left out where the validation parts were too small for every kind.
        selection.update(_both_scorings('unseen', unseen.compute(
            variants=('anomaly_map', 'paper'))))
        selection.update(_per_kind('unseen_learned', unseen))
    return dataclasses.replace(meta, calibration=fitted), selection


def _per_kind(prefix: str, results) -> dict:
    """CategoryResults -> {'<prefix>_<kind>': the learned map's I-AUROC and AUPRO@0.3 on that
    kind of defect against all good samples}."""
    return {f'{prefix}_{kind}': {k: values[k] for k in ('i_auroc', 'aupro@0.3')}
            for kind, values in results.compute_by_kind(variants=('anomaly_map',)).items()}


def _both_scorings(prefix: str, figures: dict) -> dict:
    """CategoryResults.compute's figures -> {'<prefix>_learned' | '<prefix>_paper': the
    selection metrics that are defined}, a scoring left out where none is."""
    selection = {}
    for scoring, values in (('learned', figures), ('paper', figures['paper'])):
        defined = {k: values[k] for k in SELECTION_METRICS if values[k] is not None}
        if defined:
            selection[f'{prefix}_{scoring}'] = defined
    return selection


def real_selection(model, meta: CheckpointMeta, device, dataset, root, category,
                   cache: PreprocessCache) -> dict:
    """Both scorings on the validation split's labelled defects and its good samples, each at
    its own resolution, as dbmr-eval scores the test split: {'real_learned' | 'real_paper':
    metrics}. Real defects judge a recipe better than synthetic ones can (docs/results.md)."""
    return _both_scorings('real', evaluate_category(
        Detector(model, meta, device), dataset, root, category, cache, log=lambda *_: None,
        split='validation').compute(variants=('anomaly_map', 'paper')))


TABLE_METRICS = ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1')


def selection_sets(detector: Detector, dataset: str, root, category: str, kinds: AnomalyConfig,
                   copies: int, unseen_copies: int, seed: int, cache: PreprocessCache) -> dict:
    """{set name: CategoryResults} of a calibrated detector: validation/good with `copies` of
    `kinds` of synthetic anomaly on each sample, with `unseen_copies` of each kind training never
    draws, and the split's labelled defects where it holds real ones."""
    rgb, xyz = load_split(dataset, root, category, 'validation', detector.meta.preprocess, cache)
    sets = {'training kinds': calibration.synthetic_results(detector, rgb, xyz, kinds, seed,
                                                            copies),
            'unseen kinds': calibration.unseen_results(detector, rgb, xyz, seed, unseen_copies)}
    if labelled_defects(dataset, root, category):
        sets['real defects'] = evaluate_category(detector, dataset, root, category, cache,
                                                 log=lambda *_: None, split='validation')
    return sets


def selection_table(sets: dict) -> str:
    """Markdown: pooled figures of both scorings per set, then the learned map per defect kind."""
    def row(label, values):
        cells = ['-' if values.get(k) is None else f'{values[k]:.3f}' for k in TABLE_METRICS]
        return f'| {label} | ' + ' | '.join(cells) + ' |'
    lines = ['| set, scoring | I-AUROC | P-AUROC | AUPRO@0.3 | AUPRO@0.1 |',
             '|---|---|---|---|---|']
    for name, results in sets.items():
        pooled = results.compute(variants=('anomaly_map', 'paper'))
        lines += [row(f'{name}, learned', pooled), row(f'{name}, paper', pooled['paper'])]
    for name, results in sets.items():
        for kind, values in results.compute_by_kind(variants=('anomaly_map',)).items():
            lines.append(row(f'{name}: {kind}, learned', values))
    return '\n'.join(lines) + '\n'
