"""dbmr-train / dbmr-eval / dbmr-infer on small synthetic data."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dbmr_ros.detector import Detector
from dbmr_ros.evaluate import main as eval_main
from dbmr_ros.infer import main as infer_main
from dbmr_ros.train import main as train_main
from dbmr_ros.training.util import weights_digest

BIN = Path(sys.executable).parent
SMALL_MODEL = {'image_size': 64, 'patch_size': 8, 'num_points': 400, 'num_groups': 24,
               'group_size': 12, 'embed_dim': 32, 'depth': 2, 'num_heads': 2,
               'decoder_dim': 32, 'decoder_heads': 2, 'shape_prior_components': 4}


@pytest.fixture(scope='module')
def config(tmp_path_factory):
    path = tmp_path_factory.mktemp('config') / 'train_small.yaml'
    path.write_text(yaml.safe_dump({'preset': 'tiny', 'model': SMALL_MODEL,
                                    'preprocess': {'dbscan_min_points': 8}, 'epochs': 2,
                                    'head_epochs': 1, 'batch_size': 3, 'warmup_epochs': 1,
                                    'lr': 0.002, 'log_images_every': 1, 'eval_every': 2}))
    return path


def _train_args(root, output, config, *extra):
    return ['--dataset', 'synthetic', '--data-root', str(root), '--category', 'puck',
            '--output', str(output), '--config', str(config), '--device', 'cpu', *extra]


def test_labelled_defects_in_validation_are_a_real_selection_set(synthetic_root, config,
                                                                 tmp_path):
    """Defects kept in validation/<defect> (with ground truth) are scored at every selection
    against the good validation samples, never calibrated on as good ones."""
    root = tmp_path / 'data'
    shutil.copytree(synthetic_root, root)
    for defect in ('bump', 'hole'):
        shutil.copytree(root / 'puck' / 'test' / defect, root / 'puck' / 'validation' / defect)
    run = tmp_path / 'run'
    assert train_main(_train_args(root, run, config)) == 0
    log = (run / 'train.log').read_text()
    assert 'validation holds 2 labelled defects' in log
    selections = [line for line in log.splitlines() if 'selection set' in line]
    assert len(selections) == 2 and all('real_learned i_auroc' in line and
                                        'real_paper i_auroc' in line for line in selections)
    meta = Detector.from_checkpoint(run / 'model.safetensors', 'cpu').meta
    assert 'validation/good (3 samples)' in meta.calibration.fitted_on


def test_train_eval_infer_end_to_end(synthetic_root, config, tmp_path):
    run = tmp_path / 'run'
    assert train_main(_train_args(synthetic_root, run, config)) == 0
    for name in ('model.safetensors', 'checkpoint.safetensors', 'train_state.pt', 'train.log'):
        assert (run / name).exists(), name
    assert list((run / 'tensorboard').glob('events.out.tfevents.*'))
    log = (run / 'train.log').read_text()
    assert 'epoch 2/3 reconstruction' in log and 'epoch 3/3 head' in log
    assert 'selection set (validation + synthetic anomalies)' in log
    # The defect kinds training never draws are scored once, at the end.
    selections = [line for line in log.splitlines() if 'selection set' in line]
    assert [('unseen_learned i_auroc' in line) for line in selections] == [False, True]
    assert 'unseen_paper i_auroc' in selections[-1]
    assert 'unseen_learned_crater i_auroc' in selections[-1], 'and per unseen kind'
    detector = Detector.from_checkpoint(run / 'model.safetensors', 'cpu')
    meta = detector.meta
    # The optional shape prior (on in SMALL_MODEL) is fitted before stage 1 and saved.
    assert "shape prior fitted on the training parts: {'patches'" in log
    prior = detector.model.shape_prior
    assert prior.bank.abs().sum() > 0 and prior.nll_spread > 0
    assert meta.calibration.thresholds['learned'].definition['head']['inputs'][-1] == 'shape_prior'
    assert detector.scoring == 'learned' and detector.threshold is not None
    for scoring in ('learned', 'paper'):
        entry = meta.calibration.thresholds[scoring]
        assert 'synthetic anomalies' in entry.rule and entry.definition['scoring'] == scoring
    assert 'validation/good (3 samples)' in meta.calibration.fitted_on
    assert set(meta.calibration.stats) == {'mean_2d', 'mean_3d'} and meta.epoch == 3
    assert meta.dataset == 'synthetic' and meta.category == 'puck' and meta.anomalies

    out = tmp_path / 'eval'
    assert eval_main(['--checkpoint', str(run / 'model.safetensors'), '--dataset', 'synthetic',
                      '--data-root', str(synthetic_root), '--category', 'puck', '--output',
                      str(out), '--device', 'cpu', '--num-overlays', '3']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    row = metrics['per_category']['puck']
    for key in ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1', 'aupro@0.05', 'aupro@0.01'):
        assert 0.0 <= row[key] <= 1.0 and 0.0 <= row['2d'][key] <= 1.0
        assert 0.0 <= row['3d'][key] <= 1.0 and 0.0 <= row['paper'][key] <= 1.0
        assert key in metrics['mean']
    assert metrics['scoring'] == 'learned'
    table = (out / 'results.md').read_text()
    assert '| Metric | puck | Mean |' in table
    for row_label in ('AUPRO@0.3 (RGB+3D, learned scoring)', 'I-AUROC (RGB+3D, paper scoring)',
                      'I-AUROC (RGB only, paper scoring)', 'P-AUROC (3D only, paper scoring)'):
        assert row_label in table
    # Per defect type: each type's samples against all good ones, in both files.
    test_defects = {p.name for p in (synthetic_root / 'puck' / 'test').iterdir()} - {'good'}
    assert set(row['by_defect']) == test_defects
    for defect, values in row['by_defect'].items():
        assert values['num_anomalous'] == 1 and 0.0 <= values['aupro@0.3'] <= 1.0
        assert f'| puck | {defect} | 1 |' in table
    assert (out / 'curves_puck.png').stat().st_size > 1000
    assert len(list((out / 'overlays').glob('*.png'))) == 3
    # Batches of 3 (what a GPU uses by default) give the same figures as one at a time.
    batched = tmp_path / 'eval_batched'
    assert eval_main(['--checkpoint', str(run / 'model.safetensors'), '--dataset', 'synthetic',
                      '--data-root', str(synthetic_root), '--category', 'puck', '--output',
                      str(batched), '--device', 'cpu', '--num-overlays', '0',
                      '--batch-size', '3']) == 0
    batched_row = json.loads((batched / 'metrics.json').read_text())['per_category']['puck']
    for key in ('i_auroc', 'p_auroc', 'aupro@0.3'):
        assert batched_row[key] == pytest.approx(row[key], abs=1e-4), key
        assert batched_row['paper'][key] == pytest.approx(row['paper'][key], abs=1e-4), key
    # The output of an earlier run is never overwritten without --overwrite.
    before = (out / 'metrics.json').read_bytes()
    assert eval_main(['--checkpoint', str(run / 'model.safetensors'), '--dataset', 'synthetic',
                      '--data-root', str(synthetic_root), '--category', 'puck', '--output',
                      str(out)]) == 2
    assert (out / 'metrics.json').read_bytes() == before

    inferred = tmp_path / 'infer'
    test_dir = synthetic_root / 'puck' / 'test'
    assert infer_main(['--checkpoint', str(run / 'model.safetensors'), '--input',
                       str(test_dir), '--output', str(inferred), '--device', 'cpu']) == 0
    rows = (inferred / 'scores.csv').read_text().splitlines()
    assert len(rows) == 1 + len(list(test_dir.glob('*/xyz/*.tiff')))
    assert len(list(inferred.glob('*_map.npy'))) == len(rows) - 1


def test_existing_run_is_not_overwritten_and_bad_paths_are_clear(synthetic_root, config,
                                                                 tmp_path, capsys):
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'notes.txt').write_text('mine')
    assert train_main(_train_args(synthetic_root, run, config)) == 2
    assert 'already holds a run' in capsys.readouterr().err
    assert (run / 'notes.txt').read_text() == 'mine'
    assert train_main(_train_args(tmp_path / 'nowhere', tmp_path / 'r2', config)) == 2
    assert 'does not exist' in capsys.readouterr().err
    broken = tmp_path / 'broken'
    (broken / 'puck' / 'train' / 'good' / 'xyz').mkdir(parents=True)
    for source in (synthetic_root / 'puck' / 'train' / 'good').rglob('*'):
        if source.is_file():
            target = broken / source.relative_to(synthetic_root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())
    assert train_main(_train_args(broken, tmp_path / 'r3', config)) == 2
    assert 'validation' in capsys.readouterr().err  # the missing split is named
    assert eval_main(['--checkpoint', str(tmp_path / 'none.safetensors'), '--dataset',
                      'synthetic', '--data-root', str(synthetic_root), '--category', 'puck',
                      '--output', str(tmp_path / 'e')]) == 2
    assert 'does not exist' in capsys.readouterr().err


def test_deterministic_on_cpu(synthetic_root, config, tmp_path):
    histories = []
    for name in ('a', 'b'):
        assert train_main(_train_args(synthetic_root, tmp_path / name, config)) == 0
        state = torch.load(tmp_path / name / 'train_state.pt', weights_only=True)
        histories.append(state['history'])
    assert histories[0] == histories[1] and len(histories[0]) == 3


def test_resume_after_kill_mid_epoch(synthetic_root, tmp_path, config):
    """A run killed at any moment loses at most one epoch and, resumed, ends exactly where an
    uninterrupted run ends (optimizer, scheduler and RNG state are restored; a shape prior
    rides along)."""
    slow = tmp_path / 'slow.yaml'
    values = yaml.safe_load(config.read_text())
    values.update(epochs=3, head_epochs=3, batch_size=1)
    values['model'] = {**values['model'], 'shape_prior_components': 16}
    slow.write_text(yaml.safe_dump(values))
    reference = tmp_path / 'reference'
    assert train_main(_train_args(synthetic_root, reference, slow)) == 0

    run = tmp_path / 'killed'
    command = [str(BIN / 'dbmr-train'), *_train_args(synthetic_root, run, slow)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    state = run / 'train_state.pt'
    # The event: the state of epoch 3 is on disk (saved atomically, so a read sees a whole
    # file), i.e. the run is inside epoch 4, the first head epoch. Kill it there.
    while time.monotonic() < deadline and _saved_epoch(state) < 3:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    saved = torch.load(state, weights_only=True)['epoch']
    assert 3 <= saved < 6, saved
    assert not (run / 'model.safetensors').exists()
    assert train_main(_train_args(synthetic_root, run, slow, '--resume')) == 0
    assert f'resumed from {state} at epoch {saved}' in (run / 'train.log').read_text()
    expected = torch.load(reference / 'train_state.pt', weights_only=True)
    resumed = torch.load(state, weights_only=True)
    assert resumed['history'] == expected['history']
    a = Detector.from_checkpoint(reference / 'model.safetensors', 'cpu').model
    b = Detector.from_checkpoint(run / 'model.safetensors', 'cpu').model
    assert weights_digest(a) == weights_digest(b)


def _saved_epoch(state) -> int:
    try:
        return torch.load(state, weights_only=True)['epoch']
    except FileNotFoundError:
        return 0


def test_ddp_two_processes_gloo(synthetic_root, config, tmp_path):
    run = tmp_path / 'ddp'
    env = dict(os.environ, DBMR_DIST_BACKEND='gloo', OMP_NUM_THREADS='1')
    result = subprocess.run([str(BIN / 'torchrun'), '--standalone', '--nproc_per_node=2',
                             str(BIN / 'dbmr-train'), *_train_args(synthetic_root, run, config)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    digests = dict(line.split(' weights sha1 ') for line in result.stderr.splitlines()
                   if ' weights sha1 ' in line)
    assert set(digests) == {'rank 0', 'rank 1'}, result.stderr
    assert digests['rank 0'] == digests['rank 1']
    assert (run / 'model.safetensors').exists()
    assert '2 process(es)' in (run / 'train.log').read_text()
