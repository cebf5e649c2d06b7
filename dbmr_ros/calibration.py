"""Calibration: the normalisation statistics of the maps and the decision thresholds, fitted on
good samples plus synthetic anomalies on them (never on test samples).

Every threshold is stored with the definition of the score it was fitted for (scoring, map
smoothing, the head's architecture and inputs, and SCORE_VERSION, which the code bumps whenever
it changes how a map or a score is computed). A Detector asks `Calibration.threshold_for`, which
refuses a threshold whose definition differs from what the code now computes: a changed score
can never silently reuse an old threshold. `dbmr-calibrate` refits both on new good samples
without retraining.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from dbmr_ros.data.anomalies import AnomalyConfig, anomalous_copies, KIND_NAMES
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.data.unseen_defects import unseen_copies
from dbmr_ros.model.config import DBMRConfig
from dbmr_ros.model.head import input_channels
from dbmr_ros.model.scoring import SCORINGS
from dbmr_ros.report import CategoryResults

# Bump when the code changes how maps or image scores are computed (invalidates thresholds).
SCORE_VERSION = 2
RULES = ('balanced', 'good-quantile')


class CalibrationError(RuntimeError):
    """A checkpoint's calibration does not fit the score the code computes."""


def score_definition(cfg: DBMRConfig, scoring: str) -> dict:
    """Everything an image score's scale depends on, as a JSON-able dict."""
    definition = {'version': SCORE_VERSION, 'scoring': scoring,
                  'image_score': 'max of the map smoothed by a Gaussian',
                  'smoothing_sigma': cfg.smoothing_sigma,
                  # Constants since their options left; kept so saved definitions stay equal.
                  'score_passes': 1, 'score_2d': 'pixel'}
    if scoring == 'learned':
        definition['map_margin'] = cfg.map_margin
        definition['head'] = {'widths': list(cfg.head_widths), 'context': True,
                              'inputs': [name for name, _ in input_channels(
                                  cfg.shape_prior_components > 0)]}
        if cfg.shape_prior_components:
            definition['head']['shape_prior'] = 'coreset'
        if cfg.shape_prior_components and cfg.shape_prior_radius != 2:
            # (Only where not the first window: earlier checkpoints' definitions stay valid.)
            definition['head']['shape_prior_radius'] = cfg.shape_prior_radius
    return definition


@dataclass
class Threshold:
    value: float
    rule: str                # how it was chosen, in words, with the sample counts
    definition: dict         # score_definition() it was fitted for

    def to_dict(self) -> dict:
        return {'value': self.value, 'rule': self.rule, 'definition': self.definition}


@dataclass
class Calibration:
    stats: Dict[str, float] = field(default_factory=dict)   # mean_2d, mean_3d on good pixels
    thresholds: Dict[str, Threshold] = field(default_factory=dict)  # per scoring
    fitted_on: str = ''

    def threshold_for(self, cfg: DBMRConfig, scoring: str) -> Optional[float]:
        """The threshold of `scoring`, None when there is none; CalibrationError when it was
        fitted for a different score definition."""
        entry = self.thresholds.get(scoring)
        if entry is None:
            return None
        current = score_definition(cfg, scoring)
        if entry.definition != current:
            changed = sorted(k for k in set(current) | set(entry.definition)
                             if current.get(k) != entry.definition.get(k))
            raise CalibrationError(
                f'the {scoring!r} threshold was fitted for another score definition (differs '
                f'in {changed}); recalibrate the checkpoint with dbmr-calibrate')
        return entry.value

    @classmethod
    def manual(cls, cfg: DBMRConfig, stats: Dict[str, float], threshold: float,
               note: str = 'set by hand') -> 'Calibration':
        """Given statistics and one threshold for every scoring (benchmarks, tests)."""
        return cls(dict(stats), {s: Threshold(threshold, note, score_definition(cfg, s))
                                 for s in SCORINGS}, note)

    def to_dict(self) -> dict:
        return {'stats': self.stats, 'fitted_on': self.fitted_on,
                'thresholds': {k: v.to_dict() for k, v in self.thresholds.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> 'Calibration':
        return cls(stats=dict(data.get('stats', {})), fitted_on=data.get('fitted_on', ''),
                   thresholds={k: Threshold(float(v['value']), v['rule'], v['definition'])
                               for k, v in data.get('thresholds', {}).items()})


class StatsAccumulator:
    """Means of the raw 2D and 3D maps over the foreground pixels of good samples."""

    def __init__(self):
        self.sums = {'mean_2d': 0.0, 'mean_3d': 0.0}
        self.pixels = 0

    def add(self, raw_2d: np.ndarray, raw_3d: np.ndarray, foreground: np.ndarray) -> None:
        self.sums['mean_2d'] += float(raw_2d[foreground].sum())
        self.sums['mean_3d'] += float(raw_3d[foreground].sum())
        self.pixels += int(foreground.sum())

    def stats(self) -> Dict[str, float]:
        if not self.pixels:
            raise CalibrationError('no foreground pixels to fit normalisation statistics on')
        return {k: max(v / self.pixels, 1e-12) for k, v in self.sums.items()}


def choose_threshold(good: Sequence[float], anomalous: Sequence[float], rule: str = 'balanced',
                     quantile: float = 1.0, margin: float = 1.0) -> Tuple[float, str]:
    """(threshold, description) from image scores of good samples and of synthetic anomalies.

    'balanced': the cut that maximises balanced accuracy, (TPR + TNR) / 2, between the two
    sets, placed midway between the scores on either side of it. 'good-quantile': the
    `quantile` of the good scores times `margin` (the anomalous scores are not used).
    """
    good = np.sort(np.asarray(good, dtype=np.float64))
    anomalous = np.sort(np.asarray(anomalous, dtype=np.float64))
    if good.size == 0:
        raise CalibrationError('no good samples to calibrate a threshold on')
    if rule == 'good-quantile':
        value = float(np.quantile(good, quantile) * margin)
        return value, f'quantile {quantile} of {good.size} good scores x {margin}'
    if rule != 'balanced':
        raise CalibrationError(f'unknown threshold rule {rule!r}; choose one of {RULES}')
    if anomalous.size == 0:
        raise CalibrationError("the 'balanced' rule needs synthetic anomalous scores")
    candidates = np.unique(np.concatenate([good, anomalous]))
    # Cut between candidates[i] and candidates[i + 1] (or above the top): anomalous = score >
    # the cut. Evaluate every cut at once.
    cuts = np.r_[(candidates[:-1] + candidates[1:]) / 2, candidates[-1] + 1e-9]
    tnr = np.searchsorted(good, cuts, side='right') / good.size
    tpr = 1 - np.searchsorted(anomalous, cuts, side='right') / anomalous.size
    balanced = (tnr + tpr) / 2
    best = int(np.argmax(balanced))
    value = float(cuts[best])
    return value, (f'balanced accuracy {balanced[best]:.3f} (TNR {tnr[best]:.3f}, TPR '
                   f'{tpr[best]:.3f}) between {good.size} good scores and {anomalous.size} '
                   'scores of synthetic anomalies on them')


@dataclass
class ThresholdRule:
    rule: str = 'balanced'
    quantile: float = 1.0       # 'good-quantile' only
    margin: float = 1.0         # 'good-quantile' only


def fit_stats(detector, rgb: np.ndarray, xyz: np.ndarray, batch_size: int = 8) -> dict:
    """Normalisation statistics: the means of the paper's raw 2D and 3D maps on the foreground
    of good model-size samples (N, S, S, 3)."""
    accumulator = StatsAccumulator()
    for start in range(0, len(rgb), batch_size):
        raw_2d, raw_3d = detector.raw_maps_prepared(rgb[start:start + batch_size],
                                                    xyz[start:start + batch_size])
        foreground = valid_mask(xyz[start:start + batch_size])
        accumulator.add(raw_2d.numpy(), raw_3d.numpy(), foreground)
    return accumulator.stats()


def _add_scored(results: CategoryResults, scorer, rgb: np.ndarray, xyz: np.ndarray,
                masks: Optional[np.ndarray], kinds: Optional[Sequence[str]],
                batch_size: int) -> None:
    """Score model-size samples (N, S, S, 3) with a calibrated Detector and add them to
    `results`: good ones without `masks`, anomalous ones with their masks (N, S, S) and kind
    names."""
    label = int(masks is not None)
    for start in range(0, len(rgb), batch_size):
        maps = scorer.score_prepared(rgb[start:start + batch_size], xyz[start:start + batch_size])
        for i in range(len(maps.score)):
            index = start + i
            gt = masks[index] if label else np.zeros(xyz.shape[1:3], dtype=bool)
            results.add(label, gt, maps.anomaly_map[i].numpy(), maps.map_2d[i].numpy(),
                        maps.map_3d[i].numpy(), float(maps.score[i]), maps.paper_map[i].numpy(),
                        float(maps.paper_score[i]), kinds[index] if label else '')


def scored_set(scorer, rgb: np.ndarray, xyz: np.ndarray, anomalous: tuple,
               batch_size: int = 8) -> CategoryResults:
    """A selection set scored by a calibrated Detector: the good model-size samples
    (N, S, S, 3), then `anomalous` = (rgb (M, S, S, 3), xyz (M, S, S, 3), masks (M, S, S),
    kind names (M,)) made from them."""
    bad_rgb, bad_xyz, masks, kinds = anomalous
    results = CategoryResults()
    _add_scored(results, scorer, rgb, xyz, None, None, batch_size)
    _add_scored(results, scorer, bad_rgb, bad_xyz, masks, kinds, batch_size)
    return results


def synthetic_results(scorer, rgb: np.ndarray, xyz: np.ndarray, anomalies: AnomalyConfig,
                      seed: int, copies: int, batch_size: int = 8) -> CategoryResults:
    """The first selection set: good model-size samples (N, S, S, 3) and `copies` seeded
    synthetic anomalies of the training's kinds on each, scored by a calibrated Detector."""
    bad_rgb, bad_xyz, masks, kinds = anomalous_copies(rgb, xyz, anomalies, seed, copies,
                                                      batch_size)
    return scored_set(scorer, rgb, xyz, (bad_rgb, bad_xyz, masks, [KIND_NAMES[k] for k in kinds]),
                      batch_size)


def unseen_results(scorer, rgb: np.ndarray, xyz: np.ndarray, seed: int,
                   copies: int = 1) -> CategoryResults:
    """The second selection set: good model-size samples (N, S, S, 3) and, on each, every
    defect kind that training never draws (`data/unseen_defects.py`), scored by a calibrated
    Detector. Whether a map generalises beyond the training's kinds of synthetic anomalies."""
    return scored_set(scorer, rgb, xyz, unseen_copies(rgb, xyz, seed, copies))


def fit(detector, rgb: np.ndarray, xyz: np.ndarray, anomalies: AnomalyConfig,
        rule: ThresholdRule = ThresholdRule(), seed: int = 0, copies: int = 2,
        batch_size: int = 8, fitted_on: str = ''):
    """Calibrate a Detector's checkpoint on good model-size samples (N, S, S, 3).

    1. Normalisation statistics: the means of the paper's raw maps on their foreground.
    2. `copies` synthetic anomalies per sample (seeded), and a threshold per scoring from the
       good and the synthetic image scores.
    Returns (Calibration, CategoryResults of good + synthetic at model size): the latter is the
    selection set's evaluation (labels, synthetic masks, both scorings' maps), never test data.
    """
    stats = fit_stats(detector, rgb, xyz, batch_size)
    scorer = detector.with_calibration(Calibration(stats=stats), scoring='learned')
    results = synthetic_results(scorer, rgb, xyz, anomalies, seed, copies, batch_size)
    labels = np.asarray(results.labels)
    thresholds = {}
    for scoring, variant in (('learned', 'anomaly_map'), ('paper', 'paper')):
        scores = np.asarray(results.scores[variant])
        value, text = choose_threshold(scores[labels == 0], scores[labels == 1], rule.rule,
                                       rule.quantile, rule.margin)
        thresholds[scoring] = Threshold(value, text, score_definition(detector.meta.model,
                                                                      scoring))
    return Calibration(stats, thresholds, fitted_on), results
