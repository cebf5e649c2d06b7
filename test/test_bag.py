"""dbmr-bag: dataset -> bag round trip, play/record over real ROS 2, replay evaluation."""
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Writer
from rosbags.rosbag2.writer import StoragePlugin
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, PointCloud2

from dbmr_ros.data import open_dataset
from dbmr_ros.evaluate import main as eval_main
from dbmr_ros.resources import default_model_path
from dbmr_ros.ros.bag import (evaluate_bags, main as bag_main, read_frames, read_messages,
                              replay_eval, TOPICS)
from dbmr_ros.ros.conversions import stamp_ns
from dbmr_ros.train import main as train_main
from ros_helpers import ensure_rclpy

BIN = Path(sys.executable).parent


def _make_bag(root, output, storage, dataset='synthetic', category='puck'):
    assert bag_main(['from-dataset', '--dataset', dataset, '--data-root', str(root),
                     '--category', category, '--output', str(output), '--storage',
                     storage]) == 0
    return output


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_from_dataset_round_trip(synthetic_root, tmp_path, storage):
    bag = _make_bag(synthetic_root, tmp_path / 'bag', storage)
    refs = open_dataset('synthetic', synthetic_root, 'puck', 'test')
    frames = read_frames(bag)
    assert len(frames) == len(refs)
    stamps = sorted(frames)
    assert all(b > a for a, b in zip(stamps, stamps[1:]))  # increasing stamps
    for stamp, ref in zip(stamps, refs):
        sample = ref.load()
        frame = frames[stamp]
        np.testing.assert_array_equal(frame['rgb'], sample.rgb)
        np.testing.assert_array_equal(frame['xyz'], sample.xyz)
        np.testing.assert_array_equal(frame['gt'], sample.gt)
        assert frame['gt'].any() == bool(sample.label)
    topics = {c.topic for c, _, _ in read_messages(bag)}
    assert topics == set(TOPICS.values())  # synthetic data has intrinsics: camera_info too
    assert bag_main(['from-dataset', '--dataset', 'synthetic', '--data-root',
                     str(synthetic_root), '--category', 'puck', '--output', str(bag)]) == 2


def test_play_and_record_over_ros(synthetic_root, tmp_path):
    """play publishes every message once with its stamp and /clock advancing; record writes
    what it receives."""
    import rclpy
    from rclpy.node import Node
    ensure_rclpy()
    bag = _make_bag(synthetic_root, tmp_path / 'bag', 'mcap')
    expected = sorted(stamp for stamp in read_frames(bag))
    node = Node('bag_play_probe')
    got = {'image': [], 'points': [], 'clock': []}
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, TOPICS['image'],
                             lambda m: got['image'].append(stamp_ns(m.header)), reliable)
    node.create_subscription(PointCloud2, TOPICS['points'],
                             lambda m: got['points'].append(stamp_ns(m.header)), reliable)
    node.create_subscription(Clock, '/clock', lambda m: got['clock'].append(
        m.clock.sec * 10**9 + m.clock.nanosec), 100)
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    recorded = tmp_path / 'recorded'
    played = [TOPICS['image'], TOPICS['points']]
    # Events, not sleeps: the recorder stops once it has every frame, the player starts once
    # the probe and the recorder both subscribe to each topic and the probe to /clock (without
    # the latter, a loaded machine let the first /clock messages go before it matched).
    recorder = subprocess.Popen([str(BIN / 'dbmr-bag'), 'record', *played, '--output',
                                 str(recorded), '--discovery-timeout', '60', '--messages',
                                 str(len(expected))],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    player = subprocess.Popen([str(BIN / 'dbmr-bag'), 'play', str(bag), '--clock', '--rate',
                               '4', '--reliable', '--topics', *played, '--delay', '0',
                               '--wait-for-subscribers', '2', '--wait-timeout', '120'],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while player.poll() is None and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    # Messages still in flight when the player exits: wait for them (the event), bounded.
    end = time.monotonic() + 60
    while time.monotonic() < end and not (len(got['image']) >= len(expected)
                                          and len(got['points']) >= len(expected)):
        executor.spin_once(timeout_sec=0.05)
    assert player.returncode == 0, player.stdout.read()
    try:
        assert recorder.wait(timeout=120) == 0, recorder.stdout.read()
    finally:
        recorder.kill()
    executor.shutdown()
    node.destroy_node()
    assert got['image'] == expected and got['points'] == expected  # once each, in order
    clock = got['clock']
    assert clock and all(b >= a for a, b in zip(clock, clock[1:]))
    assert clock[0] <= expected[0] and clock[-1] >= expected[-1]
    recorded_stamps = {topic: [] for topic in played}
    for connection, _, raw in read_messages(recorded):
        cls = Image if connection.topic == TOPICS['image'] else PointCloud2
        recorded_stamps[connection.topic].append(
            stamp_ns(deserialize_message(raw, cls).header))
    assert all(stamps == expected for stamps in recorded_stamps.values())


@pytest.fixture(scope='module')
def small_checkpoint(synthetic_root, tmp_path_factory):
    import yaml
    from test_train_eval import SMALL_MODEL
    directory = tmp_path_factory.mktemp('bag_model')
    config = directory / 'config.yaml'
    config.write_text(yaml.safe_dump({'preset': 'tiny', 'model': SMALL_MODEL, 'epochs': 2,
                                      'batch_size': 3, 'warmup_epochs': 1,
                                      'preprocess': {'dbscan_min_points': 8}}))
    assert train_main(['--dataset', 'synthetic', '--data-root', str(synthetic_root),
                       '--category', 'puck', '--output', str(directory / 'run'), '--config',
                       str(config), '--device', 'cpu']) == 0
    return directory / 'run' / 'model.safetensors'


def _same_as_dbmr_eval(document, checkpoint, dataset, root, category, tmp_path):
    out = tmp_path / 'dbmr_eval'
    assert eval_main(['--checkpoint', str(checkpoint), '--dataset', dataset, '--data-root',
                      str(root), '--category', category, '--output', str(out), '--device',
                      'cpu', '--verbose']) == 0
    reference = json.loads((out / 'metrics.json').read_text())['per_category'][category]
    replayed = document['per_category']['bag']
    for key in ('i_auroc', 'p_auroc', 'aupro@0.3', 'aupro@0.1', 'aupro@0.05', 'aupro@0.01'):
        assert replayed[key] == pytest.approx(reference[key], abs=1e-6), key
    return reference


def test_replay_eval_equals_dbmr_eval(synthetic_root, small_checkpoint, tmp_path, capsys):
    bag = _make_bag(synthetic_root, tmp_path / 'bag', 'sqlite3')
    document = replay_eval(bag, tmp_path / 'replay', str(small_checkpoint), 'cpu')
    frames = len(open_dataset('synthetic', synthetic_root, 'puck', 'test'))
    assert document['frames'] == document['frames_with_result'] == frames
    assert document['frames_without_result'] == 0 and document['latency_ms_p50'] > 0
    _same_as_dbmr_eval(document, small_checkpoint, 'synthetic', synthetic_root, 'puck',
                       tmp_path)
    # Image scores within 1e-6 of the Detector's, sample by sample.
    from dbmr_ros.detector import Detector
    detector = Detector.from_checkpoint(small_checkpoint, 'cpu')
    frames = read_frames(bag)
    for stamp, score in document['scores'].items():
        frame = frames[int(stamp)]
        assert score == pytest.approx(detector(frame['rgb'], frame['xyz']).score, abs=1e-6)
    assert (tmp_path / 'replay' / 'eval' / 'report.md').exists()
    assert list((tmp_path / 'replay' / 'eval' / 'overlays').glob('*.png'))


def test_real_cable_gland_bag_replays_like_dbmr_eval(mvtec_root, tmp_path):
    checkpoint = default_model_path()
    bag = _make_bag(mvtec_root, tmp_path / 'bag', 'mcap', 'mvtec3d', 'cable_gland')
    document = replay_eval(bag, tmp_path / 'replay', str(checkpoint), 'cpu')
    assert document['frames_with_result'] == 21
    _same_as_dbmr_eval(document, checkpoint, 'mvtec3d', mvtec_root, 'cable_gland', tmp_path)


def test_eval_without_ground_truth_and_damaged_bags(synthetic_root, small_checkpoint,
                                                    tmp_path):
    bag = _make_bag(synthetic_root, tmp_path / 'bag', 'sqlite3')
    replay = tmp_path / 'replay'
    replay_eval(bag, replay, str(small_checkpoint), 'cpu')
    results = replay / 'results_bag'
    # An input bag without ground truth: scores, latency and drops only.
    no_gt = tmp_path / 'no_gt'
    assert bag_main(['from-dataset', '--dataset', 'synthetic', '--data-root',
                     str(synthetic_root), '--category', 'puck', '--split', 'validation',
                     '--output', str(no_gt)]) == 0
    document = evaluate_bags(no_gt, results, tmp_path / 'eval_no_gt')
    assert 'per_category' not in document and document['frames'] == 3
    assert 'no ground truth' in (tmp_path / 'eval_no_gt' / 'report.md').read_text()
    # A truncated last message: reported clearly, the rest is evaluated.
    database = next(bag.glob('*.db3'))
    with sqlite3.connect(database) as db:
        db.execute('UPDATE messages SET data = substr(data, 1, 10) WHERE id = '
                   '(SELECT max(id) FROM messages)')
    warnings = []
    document = evaluate_bags(bag, results, tmp_path / 'eval_damaged', warn=warnings.append)
    assert any('undecodable' in w for w in warnings), warnings
    assert document['frames_with_result'] >= document['frames'] - 1
    # A bag with a topic of unknown type: play says so and plays the rest.
    unknown = tmp_path / 'unknown'
    writer = Writer(unknown, version=9, storage_plugin=StoragePlugin.SQLITE3)
    writer.open()
    connection = writer.add_connection('/foo', 'foo_msgs/msg/Bar', msgdef='int32 data',
                                       rihs01='RIHS01_' + '0' * 64)
    writer.write(connection, 1, b'\x00\x01\x00\x00\x05\x00\x00\x00')
    writer.close()
    result = subprocess.run([str(BIN / 'dbmr-bag'), 'play', str(unknown), '--delay', '0'],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ))
    assert result.returncode == 2
    assert "unknown message type 'foo_msgs/msg/Bar'" in result.stdout + result.stderr
    assert 'no message to play' in result.stderr
    # Nobody listens to a topic the user asked to wait for: a clear error after the timeout.
    lonely = subprocess.run([str(BIN / 'dbmr-bag'), 'play', str(bag), '--topics',
                             TOPICS['camera_info'], '--wait-for-subscribers', '1',
                             '--wait-timeout', '0.5', '--remap',
                             f"{TOPICS['camera_info']}:=/nobody_listens_{os.getpid()}"],
                            capture_output=True, text=True, timeout=60)
    assert lonely.returncode == 2
    assert f"fewer than 1 subscribers (topic: count): {{'{TOPICS['camera_info']}': 0}}" \
        in lonely.stderr
    missing = subprocess.run([str(BIN / 'dbmr-bag'), 'eval', '--input', str(tmp_path / 'nope'),
                              '--results', str(results), '--output', str(tmp_path / 'x')],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and 'does not exist' in missing.stderr
