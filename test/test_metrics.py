"""Metrics against cases with known answers."""
import numpy as np
import pytest

from dbmr_ros import metrics


def test_roc_auc_hand_worked():
    # Positive 0.35 beats one negative, 0.8 beats both: 3 of 4 pairs.
    assert metrics.roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert metrics.roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # ties count half
    assert metrics.roc_auc([0, 0, 1], [0.1, 0.2, 0.9]) == 1.0
    assert metrics.roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0


def test_roc_auc_needs_both_classes():
    with pytest.raises(ValueError, match='both'):
        metrics.roc_auc([1, 1], [0.1, 0.2])


def test_constant_scores_give_chance():
    labels = np.array([0] * 10 + [1] * 5)
    assert metrics.image_auroc(labels, np.ones(15)) == pytest.approx(0.5)


def _masks(n=4, size=32, seed=0):
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(n):
        m = np.zeros((size, size), dtype=np.uint8)
        y, x = rng.integers(4, size - 12, size=2)
        m[y:y + 6, x:x + 8] = 255
        masks.append(m)
    return masks


def test_perfect_map_gives_one():
    masks = _masks()
    maps = [m.astype(float) / 255 + 0.01 * np.random.default_rng(1).random(m.shape)
            for m in masks]
    assert metrics.pixel_auroc(masks, maps) == pytest.approx(1.0)
    for limit in metrics.AUPRO_LIMITS:
        assert metrics.au_pro(masks, maps, integration_limit=limit) == pytest.approx(1.0, abs=1e-9)


def test_constant_map_pro_is_zero_and_random_map_is_chance():
    masks = _masks(8, 64)
    constant = [np.ones(m.shape) for m in masks]
    assert metrics.pixel_auroc(masks, constant) == pytest.approx(0.5)
    # Nothing scores strictly above the threshold: no overlap below FPR 1.
    assert metrics.au_pro(masks, constant) == pytest.approx(0.0)
    # Uniform noise: PRO ~= FPR, so the normalised area up to L is ~L / 2.
    rng = np.random.default_rng(0)
    noise = [rng.random(m.shape) for m in masks]
    assert metrics.au_pro(masks, noise, 0.3, num_thresholds=1000) == pytest.approx(0.15, abs=0.02)
    assert metrics.pixel_auroc(masks, noise) == pytest.approx(0.5, abs=0.03)


def test_au_pro_hand_worked():
    # Normal scores [0.1, 0.4]; thresholds at ranks 0 and 1 give FPR 0.5 and 0.
    # Region [0.35, 0.8]: overlap 1.0 above 0.1, 0.5 above 0.4. Curve (0, .5) (.5, 1) (1, 1).
    # Up to 0.3: interpolated PRO 0.8, area 0.5 * (0.5 + 0.8) * 0.3 = 0.195, normalised 0.65.
    gt = [np.array([[0, 0, 1, 1]])]
    scores = [np.array([[0.1, 0.4, 0.35, 0.8]])]
    fprs, pros = metrics.pro_curve(gt, scores, num_thresholds=2)
    np.testing.assert_allclose(fprs, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(pros, [0.5, 1.0, 1.0])
    assert metrics.au_pro(gt, scores, 0.3, num_thresholds=2) == pytest.approx(0.65)


def test_pro_averages_regions_not_pixels():
    # Two regions: a big one fully detected, a small one missed; PRO counts each region once.
    gt = np.zeros((20, 20), dtype=np.uint8)
    gt[0:10, 0:10] = 1
    gt[15, 15] = 1
    score = np.zeros((20, 20))
    score[0:10, 0:10] = 1.0
    score[gt == 0] = np.linspace(0, 0.5, int((gt == 0).sum()))
    fprs, pros = metrics.pro_curve([gt], [score], num_thresholds=50)
    assert pros[0] == pytest.approx(0.5)  # at FPR 0 only the big region overlaps


def test_8_connectivity():
    gt = np.zeros((5, 5), dtype=np.uint8)
    gt[1, 1] = gt[2, 2] = 1  # diagonal neighbours: one region
    score = np.zeros((5, 5))
    score[1, 1] = 1.0
    fprs, pros = metrics.pro_curve([gt], [score], num_thresholds=3)
    assert pros[0] == pytest.approx(0.5)


def test_evaluate_keys_and_shape_errors():
    masks = _masks()
    maps = [m.astype(float) for m in masks]
    result = metrics.evaluate([1, 1, 0, 0], [2, 3, 1, 0], masks, maps)
    assert set(result) == {'i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1', 'aupro@0.05',
                           'aupro@0.01'}
    assert result['i_auroc'] == 1.0
    with pytest.raises(ValueError, match='differ'):
        metrics.pro_curve([np.zeros((3, 3))], [np.zeros((4, 4))])


def test_roc_curve_endpoints():
    fpr, tpr = metrics.roc_curve([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.3])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    auc = metrics.roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.4, 0.3])
    assert np.trapezoid(tpr, fpr) == pytest.approx(auc)
