"""Anomaly detection metrics as the MVTec 3D-AD evaluation code defines them.

- I-AUROC: ROC AUC of image scores against image labels.
- P-AUROC: ROC AUC over all pixels of all test images.
- AUPRO: normalised area under the per-region-overlap curve up to an FPR limit, with the
  reference's thresholds (evenly spaced ranks of the sorted normal-pixel scores), its
  (FPR 1, PRO 1) start point, strict '>' overlap and trapezoid rule with an interpolated last
  segment. Vectorised, but equal to the reference loop (see test/test_metrics.py).
"""
from typing import Sequence, Tuple

import numpy as np
from scipy.ndimage import label

AUPRO_LIMITS = (0.3, 0.1, 0.05, 0.01)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f'{labels.shape[0]} labels but {scores.shape[0]} scores')
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError('ROC AUC needs both positive and negative samples')
    order = np.argsort(scores, kind='mergesort')
    sorted_scores = scores[order]
    # Average rank of each group of tied scores (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], scores.size]
    group_ranks = (starts + ends + 1) / 2.0
    ranks = np.empty(scores.size)
    ranks[order] = np.repeat(group_ranks, ends - starts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct threshold, from (0, 0) to (1, 1), for plotting."""
    labels = np.asarray(labels).ravel().astype(bool)
    scores = np.asarray(scores, dtype=np.float64).ravel()
    order = np.argsort(-scores, kind='mergesort')
    s, y = scores[order], labels[order]
    last_of_group = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(y)[last_of_group]
    fp = np.cumsum(~y)[last_of_group]
    return (np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)])


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """I-AUROC: labels 1 = anomalous."""
    return roc_auc(np.asarray(labels), np.asarray(scores))


def pixel_auroc(gt_masks, anomaly_maps) -> float:
    """P-AUROC over all pixels of all images (gt > 0 is anomalous)."""
    gt = np.concatenate([np.asarray(m).ravel() > 0 for m in gt_masks])
    scores = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in anomaly_maps])
    return roc_auc(gt, scores)


def pro_curve(gt_masks, anomaly_maps, num_thresholds: int = 100
              ) -> Tuple[np.ndarray, np.ndarray]:
    """(fprs, pros), ascending in FPR, as the MVTec 3D-AD `compute_pro`.

    Components are the 8-connected regions of every gt mask. Thresholds are the normal-pixel
    scores at `num_thresholds` evenly spaced ranks; at rank p the FPR is 1 - (p + 1) / n_normal and
    a component's overlap is the fraction of its pixels scoring strictly above the threshold.
    """
    if len(gt_masks) != len(anomaly_maps):
        raise ValueError(f'{len(gt_masks)} gt masks but {len(anomaly_maps)} anomaly maps')
    structure = np.ones((3, 3), dtype=int)
    normal_scores, components = [], []
    for gt, prediction in zip(gt_masks, anomaly_maps):
        gt, prediction = np.asarray(gt) > 0, np.asarray(prediction, dtype=np.float64)
        if gt.shape != prediction.shape:
            raise ValueError(f'gt mask {gt.shape} and anomaly map {prediction.shape} differ')
        labeled, n = label(gt, structure)
        normal_scores.append(prediction[labeled == 0])
        components.extend(np.sort(prediction[labeled == k]) for k in range(1, n + 1))
    if not components:
        raise ValueError('AUPRO needs at least one anomalous region in the gt masks')
    normal = np.sort(np.concatenate(normal_scores))
    if normal.size == 0:
        raise ValueError('AUPRO needs normal pixels')
    positions = np.linspace(0, normal.size - 1, num=num_thresholds, dtype=int)
    thresholds = normal[positions]
    fprs = 1.0 - (positions + 1) / normal.size
    overlap = np.zeros(num_thresholds)
    for scores in components:
        overlap += 1.0 - np.searchsorted(scores, thresholds, side='right') / scores.size
    pros = overlap / len(components)
    return np.r_[1.0, fprs][::-1], np.r_[1.0, pros][::-1]


def trapezoid_area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) (x ascending) up to x_max, interpolating at x_max."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max not in x:
        ins = int(np.searchsorted(x, x_max, side='right'))
        if not 0 < ins < len(x):
            raise ValueError(f'integration limit {x_max} outside the curve [{x[0]}, {x[-1]}]')
        slope = (y[ins] - y[ins - 1]) / (x[ins] - x[ins - 1])
        y_interp = y[ins - 1] + slope * (x_max - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def au_pro(gt_masks, anomaly_maps, integration_limit: float = 0.3,
           num_thresholds: int = 100) -> float:
    """Normalised area under the PRO curve up to `integration_limit` (1.0 is perfect)."""
    fprs, pros = pro_curve(gt_masks, anomaly_maps, num_thresholds)
    return trapezoid_area(fprs, pros, integration_limit) / integration_limit


def evaluate(labels, image_scores, gt_masks, anomaly_maps, num_thresholds: int = 100) -> dict:
    """All the field's numbers for one category: i_auroc, p_auroc and aupro@<limit>."""
    result = {'i_auroc': image_auroc(labels, image_scores),
              'p_auroc': pixel_auroc(gt_masks, anomaly_maps)}
    fprs, pros = pro_curve(gt_masks, anomaly_maps, num_thresholds)
    for limit in AUPRO_LIMITS:
        result[f'aupro@{limit}'] = trapezoid_area(fprs, pros, limit) / limit
    return result
