"""A dataset split scored by a Detector: written once for dbmr-eval and model selection."""
from pathlib import Path
from typing import Optional

from dbmr_ros.data.datasets import open_dataset
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.detector import Detector
from dbmr_ros.report import CategoryResults, overlay_indices, write_overlay
from dbmr_ros.visualize import display_range


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
