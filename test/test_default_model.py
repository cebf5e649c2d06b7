"""The shipped default model (models/dbmr_default.safetensors): it loads, it is calibrated for the
score the code computes, and it detects the synthetic generator's defects on parts it never saw
(other seeds than its training data)."""
import numpy as np
import pytest

from dbmr_ros import metrics
from dbmr_ros.data.synthetic import DEFECTS, render_sample
from dbmr_ros.detector import Detector
from dbmr_ros.resources import default_model_path

SEEDS = range(300, 306)


def test_shipped_model_is_small_loads_and_is_calibrated():
    path = default_model_path()
    assert path.stat().st_size < 12 * 1024 * 1024
    detector = Detector.from_checkpoint(path, 'cpu')
    meta = detector.meta
    assert meta.dataset == 'synthetic' and meta.category == 'puck'
    assert detector.scoring == 'learned' and detector.threshold is not None
    assert Detector.from_checkpoint(path, 'cpu', scoring='paper').threshold is not None
    assert set(meta.calibration.stats) == {'mean_2d', 'mean_3d'} and meta.anomalies


@pytest.fixture(scope='module')
def scored():
    """{(seed, defect or None): (sample, AnomalyResult)} for every defect type on six unseen
    parts and the same six parts without a defect (scored once, shared by the tests below)."""
    detector = Detector.from_checkpoint(default_model_path(), 'cpu')
    out = {}
    for defect in (None,) + tuple(DEFECTS):
        for seed in SEEDS:
            sample = render_sample(np.random.default_rng(seed), 'puck', 256, defect)
            out[seed, defect] = sample, detector(sample.rgb, sample.xyz)
    return detector, out


def test_defective_parts_score_above_good_ones(scored):
    """The learned score ranks the defective parts above the good ones, and the calibrated
    threshold (the balanced rule: best (TPR + TNR) / 2 on validation parts and synthetic
    anomalies) separates them about as well on these unseen parts. Measured when the model was
    trained: I-AUROC 0.937; 88 % of the defective and 2 of 6 good parts flagged (balanced
    accuracy 0.77); thin scratches are the defect it misses (models/README.md). The bounds
    guard against regressions of the model or the scoring."""
    detector, results = scored
    labels = [int(defect is not None) for _, defect in results]
    scores = [result.score for _, result in results.values()]
    auroc = metrics.image_auroc(labels, scores)
    flagged = np.asarray(scores) > detector.threshold
    good = np.asarray(labels) == 0
    balanced = (flagged[~good].mean() + (~flagged[good]).mean()) / 2
    print(f'I-AUROC {auroc:.3f}, good flagged {flagged[good].mean():.2f}, defective '
          f'flagged {flagged[~good].mean():.2f}, balanced accuracy {balanced:.2f}')
    assert auroc >= 0.85
    assert flagged[~good].mean() >= 0.6 and balanced >= 0.7


def test_map_is_higher_on_the_defect_than_on_the_rest_of_the_object(scored):
    detector, results = scored
    ratios = []
    for (seed, defect), (sample, result) in results.items():
        if defect is None:
            continue
        on_object = detector.clean(sample.xyz)[..., 2] > 0
        inside = sample.gt & on_object
        if inside.sum() >= 5:
            ratios.append(result.anomaly_map[inside].mean()
                          / result.anomaly_map[on_object & ~sample.gt].mean())
    assert len(ratios) >= 25
    assert np.median(ratios) > 3.0, np.round(ratios, 2)


def test_paper_scoring_gives_the_paper_rows_of_the_learned_scoring():
    """`scoring: paper` skips the head's inputs, and its maps are the learned result's paper
    maps exactly."""
    sample = render_sample(np.random.default_rng(1), 'puck', 256, 'stain')
    learned = Detector.from_checkpoint(default_model_path(), 'cpu')(sample.rgb, sample.xyz)
    paper = Detector.from_checkpoint(default_model_path(), 'cpu',
                                     scoring='paper')(sample.rgb, sample.xyz)
    assert paper.scoring == 'paper' and paper.score == learned.paper_score
    assert np.array_equal(paper.anomaly_map, learned.paper_map)
    assert np.array_equal(paper.map_2d, learned.map_2d)
    assert np.array_equal(paper.map_3d, learned.map_3d)
