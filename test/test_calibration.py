"""Calibration: threshold rules, the score definition a threshold is tied to, dbmr-calibrate."""
import dataclasses

import numpy as np
import pytest
import torch

from dbmr_ros import calibration
from dbmr_ros.calibrate import main as calibrate_main
from dbmr_ros.calibration import (Calibration, CalibrationError, choose_threshold,
                                  score_definition, Threshold)
from dbmr_ros.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from dbmr_ros.data.preprocess import PreprocessConfig
from dbmr_ros.detector import Detector
from dbmr_ros.model import DBMRConfig, DBMRNet
from dbmr_ros.report import CategoryResults

SMALL = DBMRConfig(image_size=64, patch_size=8, num_points=400, num_groups=24, group_size=12,
                   embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2,
                   head_widths=(8, 16))
PCFG = PreprocessConfig(image_size=64, dbscan_min_points=8)


def test_balanced_rule_cuts_midway_between_separable_sets():
    value, rule = choose_threshold([0.1, 0.2, 0.3], [0.5, 0.7, 0.9])
    assert value == pytest.approx(0.4)
    assert 'balanced accuracy 1.000' in rule and '3 good scores' in rule


def test_balanced_rule_maximises_tpr_plus_tnr_on_overlapping_sets():
    good = [0.1, 0.2, 0.3, 0.45, 0.6]
    anomalous = [0.4, 0.5, 0.7, 0.8]
    value, _ = choose_threshold(good, anomalous)
    predicted_good = np.asarray(good) <= value
    predicted_bad = np.asarray(anomalous) > value
    best = (predicted_good.mean() + predicted_bad.mean()) / 2
    for cut in np.linspace(0, 1, 201):  # no other cut does better
        other = ((np.asarray(good) <= cut).mean() + (np.asarray(anomalous) > cut).mean()) / 2
        assert other <= best + 1e-12


def test_good_quantile_rule_and_errors():
    value, rule = choose_threshold([1.0, 2.0, 3.0], [], 'good-quantile', 1.0, 1.5)
    assert value == pytest.approx(4.5) and 'quantile 1.0 of 3 good scores x 1.5' == rule
    with pytest.raises(CalibrationError, match='synthetic'):
        choose_threshold([1.0], [])
    with pytest.raises(CalibrationError, match='unknown threshold rule'):
        choose_threshold([1.0], [2.0], 'magic')
    with pytest.raises(CalibrationError, match='no good samples'):
        choose_threshold([], [2.0])


def test_a_threshold_is_refused_for_another_score_definition():
    fitted = Calibration.manual(SMALL, {'mean_2d': 1.0, 'mean_3d': 2.0}, 0.5)
    assert fitted.threshold_for(SMALL, 'learned') == 0.5
    assert fitted.threshold_for(SMALL, 'paper') == 0.5
    smoother = dataclasses.replace(SMALL, smoothing_sigma=2.0)
    with pytest.raises(CalibrationError, match="smoothing_sigma.*dbmr-calibrate"):
        fitted.threshold_for(smoother, 'learned')
    # A code change that bumps SCORE_VERSION invalidates every stored threshold.
    old = dataclasses.replace(fitted.thresholds['paper'], definition={
        **fitted.thresholds['paper'].definition, 'version': calibration.SCORE_VERSION - 1})
    stale = Calibration(fitted.stats, {'paper': old})
    with pytest.raises(CalibrationError, match='version'):
        stale.threshold_for(SMALL, 'paper')
    assert Calibration().threshold_for(SMALL, 'paper') is None


def test_calibration_round_trips_through_a_checkpoint(tmp_path):
    fitted = Calibration({'mean_2d': 0.25, 'mean_3d': 4.0},
                         {'learned': Threshold(0.3, 'rule a', score_definition(SMALL, 'learned'))},
                         'somewhere')
    meta = CheckpointMeta(model=SMALL, preprocess=PCFG, calibration=fitted)
    path = save_checkpoint(tmp_path / 'm.safetensors', DBMRNet(SMALL).state_dict(), meta)
    loaded = load_checkpoint(path)[1].calibration
    assert loaded == fitted
    detector = Detector.from_checkpoint(path, 'cpu')
    assert detector.threshold == 0.3 and detector.scoring == 'learned'
    assert Detector.from_checkpoint(path, 'cpu', scoring='paper').threshold is None


def test_detector_refuses_a_stale_threshold(tmp_path):
    stale = Calibration.manual(dataclasses.replace(SMALL, map_margin=3), {}, 0.5)
    meta = CheckpointMeta(model=SMALL, preprocess=PCFG, calibration=stale)
    path = save_checkpoint(tmp_path / 'stale.safetensors', DBMRNet(SMALL).state_dict(), meta)
    with pytest.raises(CalibrationError, match='map_margin'):
        Detector.from_checkpoint(path, 'cpu')


def test_dbmr_calibrate_writes_a_new_checkpoint_and_keeps_the_input(synthetic_root, tmp_path,
                                                                    capsys):
    torch.manual_seed(0)
    stale = Calibration.manual(dataclasses.replace(SMALL, map_margin=3), {'mean_2d': 9.0}, 9.0)
    source = save_checkpoint(tmp_path / 'in.safetensors', DBMRNet(SMALL).state_dict(),
                             CheckpointMeta(model=SMALL, preprocess=PCFG, calibration=stale))
    before = source.read_bytes()
    target = tmp_path / 'out.safetensors'
    args = ['--checkpoint', str(source), '--output', str(target), '--dataset', 'synthetic',
            '--data-root', str(synthetic_root), '--category', 'puck', '--device', 'cpu',
            '--copies', '1']
    assert calibrate_main(args) == 0
    out = capsys.readouterr().out
    assert 'learned: threshold' in out and 'paper: threshold' in out
    assert source.read_bytes() == before, 'the input checkpoint is never modified'
    fitted = load_checkpoint(target)[1].calibration
    assert set(fitted.thresholds) == {'learned', 'paper'}
    assert 'puck validation (3 samples)' in fitted.fitted_on
    assert fitted.stats['mean_2d'] != 9.0
    detector = Detector.from_checkpoint(target, 'cpu')   # the stale definition is gone
    assert detector.threshold == fitted.thresholds['learned'].value
    # An existing output is never overwritten without --overwrite.
    assert calibrate_main(args) == 2
    assert 'already holds a checkpoint; pass --overwrite' in capsys.readouterr().err
    assert calibrate_main(args + ['--overwrite', '--rule', 'good-quantile']) == 0
    assert 'quantile' in load_checkpoint(target)[1].calibration.thresholds['paper'].rule


def test_dbmr_calibrate_set_changes_an_inference_setting_and_fits_for_it(synthetic_root, tmp_path,
                                                                         capsys):
    torch.manual_seed(0)
    source = save_checkpoint(tmp_path / 'in.safetensors', DBMRNet(SMALL).state_dict(),
                             CheckpointMeta(model=SMALL, preprocess=PCFG))
    target = tmp_path / 'wider.safetensors'
    args = ['--checkpoint', str(source), '--output', str(target), '--dataset', 'synthetic',
            '--data-root', str(synthetic_root), '--category', 'puck', '--device', 'cpu',
            '--copies', '1']
    assert calibrate_main(args + ['--set', 'map_margin=7', '--set', 'smoothing_sigma=1']) == 0
    written = load_checkpoint(target)[1]
    model_cfg, fitted = written.model, written.calibration
    assert (model_cfg.map_margin, model_cfg.smoothing_sigma) == (7, 1.0)
    assert model_cfg.embed_dim == SMALL.embed_dim, 'only the named settings change'
    assert fitted.thresholds['learned'].definition == score_definition(model_cfg, 'learned')
    assert Detector.from_checkpoint(target, 'cpu').model.cfg.map_margin == 7
    assert load_checkpoint(source)[1].model == SMALL, 'the input checkpoint is never modified'
    # Only inference settings, one value each; the message names the ones there are.
    for bad in ('embed_dim=64', 'map_margin=7,8', 'map_margin=wide'):
        with pytest.raises(SystemExit):
            calibrate_main(args + ['--overwrite', '--set', bad])
        assert 'map_margin' in capsys.readouterr().err


def test_selection_results_by_kind_show_a_missed_kind():
    """Pooled figures hide a kind of defect the map misses; `compute_by_kind` pairs each kind
    with all good samples."""
    results = CategoryResults()
    size = 16
    rng = np.random.default_rng(0)
    for _ in range(3):  # good: low noise everywhere
        results.add(0, np.zeros((size, size)), rng.uniform(0, 0.1, (size, size)), None, None,
                    0.1)
    for kind, found in (('rgb', True), ('displaced', False)):
        for _ in range(3):
            gt = np.zeros((size, size), dtype=bool)
            gt[4:8, 4:8] = True
            anomaly_map = rng.uniform(0, 0.1, (size, size)) + (0.5 * gt if found else 0.0)
            results.add(1, gt, anomaly_map, None, None, float(anomaly_map.max()), kind=kind)
    by_kind = results.compute_by_kind()
    assert set(by_kind) == {'rgb', 'displaced'}
    assert by_kind['rgb']['aupro@0.3'] == pytest.approx(1.0)
    assert by_kind['rgb']['num_samples'] == 6 and by_kind['displaced']['num_anomalous'] == 3
    assert by_kind['displaced']['aupro@0.3'] < 0.5 < results.compute()['aupro@0.3'] < 1.0
    assert results.kinds[:3] == ['', '', '']
    learned_only = results.compute_by_kind(variants=('anomaly_map',))  # what training logs
    assert learned_only['displaced']['aupro@0.3'] == by_kind['displaced']['aupro@0.3']


def test_fit_tags_each_synthetic_defect_with_its_kind():
    """The selection set's results carry each synthetic defect's kind, so the training log
    and the ablations can show the learned map per kind."""
    from dbmr_ros.data.anomalies import AnomalyConfig, KIND_NAMES
    from parts import model_size_parts
    rgb, xyz = (t.numpy() for t in model_size_parts(4, 64, 80, seed=2))
    torch.manual_seed(0)
    detector = Detector(DBMRNet(SMALL).eval(), CheckpointMeta(model=SMALL, preprocess=PCFG))
    _, results = calibration.fit(detector, rgb, xyz, AnomalyConfig(), seed=3, copies=2)
    assert results.kinds[:4] == [''] * 4
    assert len(results.kinds) == 12 and set(results.kinds[4:]) <= set(KIND_NAMES[1:])
    assert set(results.compute_by_kind()) == set(results.kinds[4:])


def test_a_good_sample_without_a_mask_counts_as_nothing_anomalous():
    """validation/good has no mask files: its samples add an empty mask; a defect without
    one is refused."""
    results = CategoryResults()
    good = np.zeros((8, 8), np.float32)
    results.add(0, None, good, None, None, 0.1)
    assert results.gts[0].shape == (8, 8) and not results.gts[0].any()
    with pytest.raises(ValueError, match='ground-truth mask'):
        results.add(1, None, good, None, None, 0.9)
