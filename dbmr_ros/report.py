"""Evaluation reports: metrics over collected results, metrics.json, a Markdown table laid out
like the paper's (classes as columns, mean last), ROC / PRO plots and heatmap overlays. Shared by
dbmr-eval and the rosbag evaluation."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dbmr_ros import metrics
from dbmr_ros.files import atomic_write
from dbmr_ros.visualize import report_panel

METRIC_KEYS = ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1', 'aupro@0.05', 'aupro@0.01')
# 'anomaly_map' is the scoring in use (learned head or paper); the others are the paper's maps,
# so every table shows what the learned head adds and what each modality contributes.
MAP_VARIANTS = (('anomaly_map', 'RGB+3D'), ('paper', 'RGB+3D, paper scoring'),
                ('2d', 'RGB only, paper scoring'), ('3d', '3D only, paper scoring'))


@dataclass
class CategoryResults:
    """What a category's evaluation collects, one entry per test sample."""

    labels: List[int] = field(default_factory=list)
    scores: Dict[str, List[float]] = field(
        default_factory=lambda: {k: [] for k, _ in MAP_VARIANTS})
    maps: Dict[str, List[np.ndarray]] = field(
        default_factory=lambda: {k: [] for k, _ in MAP_VARIANTS})
    gts: List[np.ndarray] = field(default_factory=list)
    kinds: List[str] = field(default_factory=list)   # the defect's kind ('' for good samples)

    def add(self, label: int, gt: np.ndarray, anomaly_map, map_2d, map_3d, score: float,
            paper=None, paper_score: Optional[float] = None, kind: str = '') -> None:
        """map_2d / map_3d / paper may be None (a results bag holds the anomaly map only); gt
        None for a good sample without a mask file (validation/good's): nothing anomalous."""
        if gt is None:
            if label:
                raise ValueError('a defective sample needs its ground-truth mask')
            gt = np.zeros(np.shape(anomaly_map), bool)
        self.labels.append(int(label))
        self.kinds.append(kind if label else '')
        self.gts.append(np.asarray(gt) > 0)
        scores = {'anomaly_map': score, 'paper': paper_score}
        for key, value in (('anomaly_map', anomaly_map), ('paper', paper), ('2d', map_2d),
                           ('3d', map_3d)):
            if value is not None:
                self.maps[key].append(value.astype(np.float32))
                given = scores.get(key)
                self.scores[key].append(float(value.max()) if given is None else given)

    def compute(self, variants: Optional[Sequence[str]] = None) -> dict:
        """{'i_auroc': .., ..., 'paper': {...}, '2d': {...}, '3d': {...}} (None where
        undefined). `variants`: the map variants to compute ('anomaly_map', 'paper', '2d', '3d';
        default all); the others are left None (each costs a PRO curve)."""
        out = {}
        for key, _ in MAP_VARIANTS:
            values = dict.fromkeys(METRIC_KEYS)
            wanted = variants is None or key in variants
            if wanted and len(self.maps[key]) == len(self.labels):
                values = _safe(self.labels, self.scores[key], self.gts, self.maps[key])
            if key == 'anomaly_map':
                out.update(values)
            else:
                out[key] = values
        out['num_samples'] = len(self.labels)
        out['num_anomalous'] = int(sum(self.labels))
        return out

    def subset(self, indices) -> 'CategoryResults':
        part = CategoryResults()
        part.labels = [self.labels[i] for i in indices]
        part.kinds = [self.kinds[i] for i in indices]
        part.gts = [self.gts[i] for i in indices]
        for key in self.maps:
            if len(self.maps[key]) == len(self.labels):
                part.maps[key] = [self.maps[key][i] for i in indices]
                part.scores[key] = [self.scores[key][i] for i in indices]
        return part

    def compute_by_kind(self, variants: Optional[Sequence[str]] = None) -> Dict[str, dict]:
        """Per defect kind, `compute(variants)` of the good samples and that kind's: where a
        map finds one kind of defect and misses another, the pooled figures hide it."""
        good = [i for i, label in enumerate(self.labels) if not label]
        return {kind: self.subset(good + [i for i, k in enumerate(self.kinds) if k == kind])
                .compute(variants) for kind in sorted(set(self.kinds) - {''})}


def _safe(labels, scores, gts, maps) -> dict:
    values = dict.fromkeys(METRIC_KEYS)
    if 0 < sum(labels) < len(labels):
        values['i_auroc'] = metrics.image_auroc(labels, scores)
    if any(g.any() for g in gts):
        values['p_auroc'] = metrics.pixel_auroc(gts, maps)
        fprs, pros = metrics.pro_curve(gts, maps)
        for limit in metrics.AUPRO_LIMITS:
            values[f'aupro@{limit}'] = metrics.trapezoid_area(fprs, pros, limit) / limit
    return values


def mean_over(per_category: Dict[str, dict]) -> dict:
    def mean(rows, key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None
    rows = list(per_category.values())
    out = {k: mean(rows, k) for k in METRIC_KEYS}
    for variant, _ in MAP_VARIANTS[1:]:
        out[variant] = {k: mean([r[variant] for r in rows], k) for k in METRIC_KEYS}
    return out


def variant_labels(scoring: str) -> Dict[str, str]:
    """Row labels; the first names the scoring in use."""
    labels = dict(MAP_VARIANTS)
    labels['anomaly_map'] = f'RGB+3D, {scoring} scoring'
    return labels


def markdown_table(per_category: Dict[str, dict], title: str = '',
                   scoring: str = 'learned') -> str:
    """Classes as columns, mean last; a row per metric and map variant (variants without any
    value, such as the paper's maps in a results bag, are left out)."""
    classes = list(per_category)
    mean = mean_over(per_category)
    header = '| Metric | ' + ' | '.join(classes) + ' | Mean |'
    lines = [f'### {title}', ''] if title else []
    lines += [header, '|' + '---|' * (len(classes) + 2)]
    for variant, label in variant_labels(scoring).items():
        def value(row, key):
            return row.get(key) if variant == 'anomaly_map' else row[variant].get(key)

        if all(value(per_category[c], k) is None for c in classes for k in METRIC_KEYS):
            continue
        for key in METRIC_KEYS:
            cells = [value(per_category[c], key) for c in classes] + [value(mean, key)]
            lines.append(f'| {key.upper().replace("_", "-")} ({label}) | ' + ' | '.join(
                '-' if v is None else f'{v:.3f}' for v in cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_plots(results: Dict[str, CategoryResults], directory: Path,
                scoring: str = 'learned') -> List[Path]:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    paths = []
    for name, res in results.items():
        figure, (roc_axis, pro_axis) = plt.subplots(1, 2, figsize=(10, 4.5))
        for key, label in variant_labels(scoring).items():
            if len(res.maps[key]) != len(res.labels):
                continue
            if 0 < sum(res.labels) < len(res.labels):
                fpr, tpr = metrics.roc_curve(res.labels, res.scores[key])
                roc_axis.plot(fpr, tpr, label=f'{label} ({metrics.image_auroc(res.labels, res.scores[key]):.3f})')  # noqa: E501
            if any(g.any() for g in res.gts):
                fprs, pros = metrics.pro_curve(res.gts, res.maps[key])
                pro_axis.plot(fprs, pros, label=label)
        roc_axis.set(title=f'{name}: image ROC', xlabel='FPR', ylabel='TPR')
        pro_axis.set(title=f'{name}: PRO curve', xlabel='FPR', ylabel='PRO', xlim=(0, 0.3))
        pro_axis.axvline(0.3, color='grey', lw=0.5)
        for axis in (roc_axis, pro_axis):
            axis.legend(loc='lower right')
            axis.grid(alpha=0.3)
        path = directory / f'curves_{name.replace("/", "_")}.png'
        figure.tight_layout()
        figure.savefig(path, dpi=90)
        plt.close(figure)
        paths.append(path)
    return paths


def write_evaluation(output: Path, collected: Dict[str, CategoryResults], extra: dict,
                     title: str, scoring: str) -> Tuple[dict, str]:
    """The one way results become a report (dbmr-eval and the bag evaluation): metrics.json
    (`extra` + per category + mean), curves_<category>.png; returns (document, Markdown table
    of the metrics, '' without ground truth)."""
    per_category = {}
    for name, results in collected.items():
        per_category[name] = results.compute()
        by_defect = results.compute_by_kind()
        if by_defect:
            per_category[name]['by_defect'] = by_defect
    write_plots(collected, output, scoring)
    document = write_metrics(output / 'metrics.json', per_category, extra)
    if not per_category:
        return document, ''
    return document, markdown_table(per_category, title, scoring) + defect_table(per_category,
                                                                                 scoring)


def defect_table(per_category: Dict[str, dict], scoring: str) -> str:
    """Per defect type (its samples and every good one of the category): I-AUROC, P-AUROC and
    AUPRO@0.3 of the scoring in use and of the paper's map; '' without defect types."""
    rows = []
    for name, values in per_category.items():
        for defect, row in values.get('by_defect', {}).items():
            cells = [row.get(k) for k in ('i_auroc', 'p_auroc', 'aupro@0.3')]
            cells += [row['paper'].get(k) for k in ('i_auroc', 'p_auroc', 'aupro@0.3')]
            rows.append(f'| {name} | {defect} | {row["num_anomalous"]} | ' + ' | '.join(
                '-' if v is None else f'{v:.3f}' for v in cells) + ' |')
    if not rows:
        return ''
    return ('\n### Per defect type (its samples against all good ones)\n\n'
            f'| category | defect | samples | I-AUROC ({scoring}) | P-AUROC | AUPRO@0.3 | '
            'I-AUROC (paper) | P-AUROC | AUPRO@0.3 |\n|---|---|---|---|---|---|---|---|---|\n'
            + '\n'.join(rows) + '\n')


def overlay_indices(count: int, num_overlays: int) -> List[int]:
    """Which of `count` samples get an overlay: `num_overlays` of them, evenly spaced."""
    if num_overlays <= 0:
        return []
    step = max(count // num_overlays, 1)
    return list(range(0, count, step))[:num_overlays]


def write_overlay(directory: Path, name: str, rgb, xyz, gt, anomaly_map, vmax: float,
                  score: float, threshold: Optional[float]) -> Path:
    from dbmr_ros.data.io import write_rgb
    verdict = '' if threshold is None else (' ANOMALOUS' if score > threshold else ' good')
    panel = report_panel(rgb, xyz, gt, anomaly_map, vmax, f'{name} score {score:.3f}{verdict}')
    path = directory / f'{name.replace("/", "_")}.png'
    write_rgb(path, panel)
    return path


def write_metrics(path: Path, per_category: Dict[str, dict], extra: dict) -> dict:
    """metrics.json, written atomically: `extra`, plus per category and mean metrics where
    there are any (an evaluation without ground truth has none)."""
    document = dict(extra)
    if per_category:
        document.update(per_category=per_category, mean=mean_over(per_category))
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(document, indent=2)))
    return document
