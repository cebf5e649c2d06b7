"""Detection is learned, and a user gets there from a recording of their own line.

One short training serves both tests, made the way the README's "Your own parts" says: a line
of good synthetic parts is published by a camera-like player and recorded over ROS 2
(`dbmr-bag play` / `dbmr-bag record`), converted (`dbmr-bag to-dataset`), trained on
(`dbmr-train`, a small model for 50 + 100 epochs, one thread: about 3.5 min with two busy
processes beside it) and
recalibrated (`dbmr-calibrate`). Then a labelled recording of other parts, good and defective,
is scored by `dbmr-eval` (issue #10: the learned image score separates defective from good
parts, and its map localises better than the paper's) and replayed through the node
(`dbmr-bag replay-eval`, issue #14: the defective parts score above the good ones).

The defects are the generator's holes, cuts, stains and combined defects, none of which the
training's synthetic anomalies draw. Its dents, bumps and thin scratches need the full recipe
(the shipped model: models/README.md); at this budget they score like good parts. What this
budget gives on these parts (`pytest -s` prints it): every defective part above every good one
(I-AUROC 1.0; the paper's scoring 0.63), P-AUROC 0.998, AUPRO@0.3 0.983 (paper 0.92 / 0.66),
with learned image scores of 0.18-0.24 for the good parts and 0.26-0.36 for the defective ones;
the assertions leave room for one part to swap.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dbmr_ros.calibrate import main as calibrate_main
from dbmr_ros.data.synthetic import write_dataset
from dbmr_ros.evaluate import main as eval_main
from dbmr_ros.metrics import image_auroc
from dbmr_ros.ros.bag import main as bag_main, read_frames, replay_eval, TOPICS

BIN = Path(sys.executable).parent
MODEL = {'image_size': 128, 'patch_size': 8, 'num_points': 1024, 'num_groups': 64,
         'group_size': 16, 'embed_dim': 64, 'depth': 3, 'num_heads': 2, 'decoder_dim': 64,
         'decoder_heads': 2, 'head_widths': [8, 16, 32], 'smoothing_sigma': 2.0,
         'map_margin': 4}
# The generator's 160 px parts are seen at 1.3 mm point spacing, and the raised centre of a puck
# can sit more than the default 6 mm above its ring with no points on the step between them:
# the default eps then cuts the centre off one good part of the check run (4186 instead of
# about 5000 points kept), and the model rightly calls the part incomplete. Setting eps for the
# sensor is what README "Your own parts" asks of a new setup.
PREPROCESS = {'dbscan_min_points': 8, 'dbscan_eps': 0.009}
TRAINING = {'preset': 'tiny', 'model': MODEL, 'preprocess': PREPROCESS,
            'epochs': 50, 'head_epochs': 100, 'head_lr': 0.005, 'batch_size': 4,
            'warmup_epochs': 2, 'eval_every': 0, 'log_images_every': 0}
DETECTABLE = ('hole', 'cut', 'stain', 'combined')
LINE_PARTS = 28  # good parts recorded; to-dataset keeps the last 15 % for validation


def _record(bag: Path, output: Path, frames: int) -> None:
    """Play `bag` over ROS 2 and record it, as a user records a camera: the player waits for
    the recorder's subscriptions, the recorder stops once it has every frame (events only)."""
    topics = [TOPICS['image'], TOPICS['points']]
    recorder = subprocess.Popen([str(BIN / 'dbmr-bag'), 'record', *topics, '--output',
                                 str(output), '--discovery-timeout', '60', '--messages',
                                 str(frames)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        player = subprocess.run([str(BIN / 'dbmr-bag'), 'play', str(bag), '--rate', '4',
                                 '--reliable', '--topics', *topics, '--delay', '0',
                                 '--wait-for-subscribers', '1', '--wait-timeout', '120'],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=300)
        assert player.returncode == 0, player.stdout
        assert recorder.wait(timeout=120) == 0, recorder.stdout.read()
    finally:
        recorder.kill()


@pytest.fixture(scope='module')
def line(tmp_path_factory):
    """{'checkpoint': the recalibrated model, 'checked': the labelled parts (dataset root),
    'checked_bag': the same parts as a labelled recording}."""
    work = tmp_path_factory.mktemp('line')
    good = write_dataset(work / 'camera', 'puck', size=160, n_train=LINE_PARTS,
                         n_validation=0, n_test_good=0, n_test_per_defect=0, seed=5)
    assert bag_main(['from-dataset', '--dataset', 'synthetic', '--data-root', str(good.parent),
                     '--category', 'puck', '--split', 'train', '--output',
                     str(work / 'camera_bag')]) == 0
    _record(work / 'camera_bag', work / 'recording', LINE_PARTS)
    assert bag_main(['to-dataset', str(work / 'recording'), '--output', str(work / 'data'),
                     '--category', 'line']) == 0
    config = work / 'train.yaml'
    config.write_text(yaml.safe_dump(TRAINING))
    # One OpenMP thread: on a machine other jobs keep busy, two threads stall each other at
    # every barrier (measured with two busy loops: over 600 s with two threads, 214 s with one).
    trained = subprocess.run([str(BIN / 'dbmr-train'), '--dataset', 'mvtec3d', '--data-root',
                              str(work / 'data'), '--category', 'line', '--output',
                              str(work / 'run'), '--config', str(config), '--device', 'cpu'],
                             env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert trained.returncode == 0, trained.stdout[-3000:]
    checkpoint = work / 'run' / 'line_calibrated.safetensors'
    assert calibrate_main(['--checkpoint', str(work / 'run' / 'model.safetensors'), '--output',
                           str(checkpoint), '--dataset', 'mvtec3d', '--data-root',
                           str(work / 'data'), '--category', 'line', '--device', 'cpu']) == 0
    checked = write_dataset(work / 'checked', 'puck', size=160, n_train=0, n_validation=0,
                            n_test_good=6, n_test_per_defect=2, seed=6, defects=DETECTABLE)
    assert bag_main(['from-dataset', '--dataset', 'synthetic', '--data-root',
                     str(checked.parent), '--category', 'puck', '--output',
                     str(work / 'checked_bag')]) == 0
    return {'checkpoint': checkpoint, 'checked': checked.parent,
            'checked_bag': work / 'checked_bag'}


def test_short_training_separates_defective_parts_and_localises_them(line, tmp_path):
    out = tmp_path / 'eval'
    assert eval_main(['--checkpoint', str(line['checkpoint']), '--dataset', 'synthetic',
                      '--data-root', str(line['checked']), '--category', 'puck', '--output',
                      str(out), '--device', 'cpu', '--num-overlays', '0']) == 0
    row = json.loads((out / 'metrics.json').read_text())['per_category']['puck']
    print({k: row[k] for k in ('i_auroc', 'p_auroc', 'aupro@0.3')}, 'paper',
          {k: row['paper'][k] for k in ('i_auroc', 'p_auroc', 'aupro@0.3')})
    assert row['i_auroc'] >= 0.9, row               # image level: defective above good
    assert row['i_auroc'] >= row['paper']['i_auroc'] + 0.1, row
    assert row['p_auroc'] >= 0.95, row              # and where the defect is
    assert row['p_auroc'] >= row['paper']['p_auroc'] + 0.03, row
    assert row['aupro@0.3'] >= row['paper']['aupro@0.3'] + 0.1, row


def test_a_labelled_recording_replayed_through_the_node(line, tmp_path):
    document = replay_eval(line['checked_bag'], tmp_path / 'replay', str(line['checkpoint']),
                           'cpu')
    frames = 6 + 2 * len(DETECTABLE)
    assert document['frames'] == document['frames_with_result'] == frames
    labels = {stamp: int(frame['gt'].any()) for stamp, frame in
              read_frames(line['checked_bag']).items()}
    scores = {int(stamp): score for stamp, score in document['scores'].items()}
    good = [scores[s] for s, label in labels.items() if label == 0]
    defective = [scores[s] for s, label in labels.items() if label == 1]
    print('good', np.round(sorted(good), 3), 'defective', np.round(sorted(defective), 3))
    assert len(good) == 6 and len(defective) == 2 * len(DETECTABLE)
    assert image_auroc([0] * len(good) + [1] * len(defective), good + defective) >= 0.9
    assert np.median(defective) > max(good)
