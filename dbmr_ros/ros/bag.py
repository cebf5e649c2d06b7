"""dbmr-bag: rosbag2 tools (sqlite3 and MCAP, via the pure-Python `rosbags` package).

    from-dataset  write a labelled test set as sensor messages (+ /ground_truth/mask)
    play          publish a bag over ROS 2 with its recorded timing and QoS (+ /clock)
    record        record topics to a bag (raw, as received)
    eval          metrics, latency and drops from an input bag and a results bag
    replay-eval   start the node, play, record, evaluate: the whole loop in one command

Messages are stored as the CDR bytes rclpy itself sends, so the bags open in `ros2 bag info/play`
of any ROS 2 distro, and `ros2 bag play` works with the node as well as `dbmr-bag play` does.
"""
import argparse
import importlib
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import rclpy
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy)
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import Reader, ReaderError, Writer
from rosbags.rosbag2.writer import StoragePlugin
from rosbags.typesys import get_typestore, Stores
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from dbmr_ros.data.datasets import DATASETS, DatasetError, open_dataset
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.resources import use_dds_defaults, use_large_data_profile
from dbmr_ros.ros.conversions import (cloud_from_arrays, cloud_to_xyz, image_from_array,
                                      image_to_rgb)

TOPICS = {'image': '/camera/color/image_raw', 'points': '/camera/depth/points',
          'camera_info': '/camera/color/camera_info', 'gt': '/ground_truth/mask'}
DETECTOR = '/dbmr_detector'
RESULT_TOPICS = (f'{DETECTOR}/result', f'{DETECTOR}/anomaly_map')
START_STAMP_NS = 1_700_000_000 * 10**9
TYPESTORE = get_typestore(Stores.ROS2_KILTED)


class BagError(RuntimeError):
    """A bag that cannot be read or written, with the reason."""


def message_class(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class; BagError when not importable."""
    try:
        package, _, name = msgtype.split('/')
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ValueError, ImportError, AttributeError) as error:
        raise BagError(f'unknown message type {msgtype!r}') from error


def stamp_of(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


# --- QoS ---------------------------------------------------------------------------------

def _bag_qos(reliable: bool, depth: int = 10) -> Qos:
    infinite = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.VOLATILE, deadline=infinite, lifespan=infinite,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=infinite,
               avoid_ros_namespace_conventions=False)


def _rclpy_qos(connection, force_reliable: bool) -> QoSProfile:
    """The publisher QoS a recorded connection was offered with (reliable when unknown)."""
    profiles = getattr(connection.ext, 'offered_qos_profiles', None) or []
    reliable = force_reliable or not profiles or all(
        p.reliability != QosReliability.BEST_EFFORT for p in profiles)
    depth = max([p.depth for p in profiles] + [10])
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliable
                      else ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


# --- writing -----------------------------------------------------------------------------

def open_writer(path, storage: str) -> Writer:
    path = Path(path)
    if path.exists():
        raise BagError(f'{path} exists; bags are never overwritten, choose another path')
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    writer.open()
    return writer


def from_dataset(args) -> Path:
    refs = open_dataset(args.dataset, args.data_root, args.category, args.split)
    writer = open_writer(args.output, args.storage)
    period_ns = int(1e9 / args.rate)
    try:
        sensor_qos, reliable_qos = [_bag_qos(False, 5)], [_bag_qos(True)]
        connections = {
            'image': writer.add_connection(TOPICS['image'], 'sensor_msgs/msg/Image',
                                           typestore=TYPESTORE,
                                           offered_qos_profiles=sensor_qos),
            'points': writer.add_connection(TOPICS['points'], 'sensor_msgs/msg/PointCloud2',
                                            typestore=TYPESTORE,
                                            offered_qos_profiles=sensor_qos)}
        for i, ref in enumerate(refs):
            sample = ref.load()
            stamp = START_STAMP_NS + i * period_ns
            header = Image().header
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
            header.frame_id = args.frame_id
            # As a sensor publishes them: raw, invalid points NaN, not preprocessed.
            points = np.where(valid_mask(sample.xyz)[..., None], sample.xyz, np.nan)
            messages = [('image', image_from_array(sample.rgb, 'rgb8', header)),
                        ('points', cloud_from_arrays(points.astype(np.float32),
                                                     header=header))]
            if sample.intrinsics is not None:
                if 'camera_info' not in connections:
                    connections['camera_info'] = writer.add_connection(
                        TOPICS['camera_info'], 'sensor_msgs/msg/CameraInfo',
                        typestore=TYPESTORE, offered_qos_profiles=reliable_qos)
                info = CameraInfo(header=header, height=sample.rgb.shape[0],
                                  width=sample.rgb.shape[1], distortion_model='plumb_bob',
                                  d=[0.0] * 5, k=sample.intrinsics.flatten().tolist())
                info.p = np.c_[sample.intrinsics, np.zeros(3)].flatten().tolist()
                info.r = np.eye(3).flatten().tolist()
                messages.append(('camera_info', info))
            if sample.gt is not None:
                if 'gt' not in connections:
                    connections['gt'] = writer.add_connection(
                        TOPICS['gt'], 'sensor_msgs/msg/Image', typestore=TYPESTORE,
                        offered_qos_profiles=reliable_qos)
                messages.append(('gt', image_from_array(sample.gt.astype(np.uint8) * 255,
                                                        'mono8', header)))
            for key, msg in messages:
                writer.write(connections[key], stamp, serialize_message(msg))
    finally:
        writer.close()
    print(f'wrote {len(refs)} frames of {args.dataset}/{args.category}/{args.split} to '
          f'{args.output} ({args.storage})')
    return Path(args.output)


# --- reading -----------------------------------------------------------------------------

def read_messages(path, topics=None, warn: Callable[[str], None] = print):
    """Yield (topic, msgtype, log_time_ns, rawdata) in log-time order. A damaged bag (for
    example a truncated last message) stops the iteration with a clear warning, keeping every
    message read before the damage."""
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as error:
        raise BagError(f'cannot open bag {path}: {error}') from error
    count = 0
    try:
        connections = [c for c in reader.connections if topics is None or c.topic in topics]
        try:
            for connection, log_time, raw in reader.messages(connections=connections):
                count += 1
                yield connection, log_time, raw
        except (ReaderError, OSError, ValueError, KeyError, EOFError) as error:
            warn(f'bag {path} is damaged after {count} messages ({type(error).__name__}: '
                 f'{error}); using what was read')
    finally:
        reader.close()


def decode(raw: bytes, cls, topic: str, warn: Callable[[str], None] = print):
    try:
        return deserialize_message(raw, cls)
    except Exception as error:  # noqa: BLE001 - rclpy raises bare exceptions on bad CDR
        warn(f'skipping an undecodable {cls.__name__} on {topic} ({len(raw)} bytes): {error}')
        return None


def read_frames(path, image_topic=TOPICS['image'], points_topic=TOPICS['points'],
                gt_topic=TOPICS['gt'], warn=print) -> Dict[int, dict]:
    """stamp -> {'rgb', 'xyz' (NaN -> 0), 'gt' (bool or None), 'frame_id'} of an input bag."""
    frames: Dict[int, dict] = {}
    kinds = {image_topic: ('rgb', Image), points_topic: ('xyz', PointCloud2),
             gt_topic: ('gt', Image)}
    for connection, _, raw in read_messages(path, set(kinds), warn):
        key, cls = kinds[connection.topic]
        msg = decode(raw, cls, connection.topic, warn)
        if msg is None:
            continue
        frame = frames.setdefault(stamp_of(msg.header), {'frame_id': msg.header.frame_id})
        if key == 'rgb':
            frame['rgb'] = image_to_rgb(msg)
        elif key == 'xyz':
            xyz = cloud_to_xyz(msg)
            frame['xyz'] = np.where(np.isfinite(xyz), xyz, 0.0).astype(np.float32)
        else:
            frame['gt'] = image_to_rgb(msg)[..., 0] > 0
    return frames


# --- play --------------------------------------------------------------------------------

class Player:
    """Publishes a bag's messages with their recorded timing, optionally /clock."""

    def __init__(self, node: Node, path, topics=None, remap: Optional[Dict[str, str]] = None,
                 reliable: bool = False, warn=print):
        self.node, self.path, self.warn = node, Path(path), warn
        remap = remap or {}
        self.messages = []
        self.publishers = {}
        for connection, log_time, raw in read_messages(self.path, topics, warn):
            if connection.topic not in self.publishers:
                try:
                    cls = message_class(connection.msgtype)
                except BagError as error:
                    warn(f'skipping topic {connection.topic}: {error}')
                    self.publishers[connection.topic] = None
                    continue
                self.publishers[connection.topic] = node.create_publisher(
                    cls, remap.get(connection.topic, connection.topic),
                    _rclpy_qos(connection, reliable))
            if self.publishers[connection.topic] is not None:
                self.messages.append((log_time, connection.topic, raw))
        if not self.messages:
            raise BagError(f'bag {self.path} has no message to play')
        self.clock = node.create_publisher(Clock, '/clock', 10)

    def _publish_clock(self, ns: int):
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = divmod(int(ns), 10**9)
        self.clock.publish(msg)

    def play(self, rate: float = 1.0, clock: bool = False, loop: bool = False,
             gate: Optional[Callable[[str, int], bool]] = None, gate_timeout: float = 30.0,
             linger: Optional[Callable[[], bool]] = None, stop=None) -> int:
        """Publish everything (again and again with loop); returns messages published.

        gate(topic, log_time) may hold a message back until it returns True (lockstep
        evaluation); /clock keeps running meanwhile. linger() keeps /clock running after the
        last message until it returns False.
        """
        published = 0
        stop = stop or threading.Event()
        while not stop.is_set():
            first = self.messages[0][0]
            start = time.monotonic()
            offset = 0.0  # seconds the gate has held the bag back

            def bag_now():
                return first + (time.monotonic() - start - offset) * rate * 1e9

            for log_time, topic, raw in self.messages:
                while not stop.is_set():
                    wait = (log_time - first) / 1e9 / rate - (time.monotonic() - start - offset)
                    if wait <= 0:
                        break
                    if clock:
                        self._publish_clock(bag_now())
                    time.sleep(min(wait, 0.01))
                held = time.monotonic()
                while gate is not None and not gate(topic, log_time) and not stop.is_set() \
                        and time.monotonic() - held < gate_timeout:
                    if clock:
                        self._publish_clock(max(bag_now(), log_time))
                    time.sleep(0.005)
                offset += time.monotonic() - held
                if clock:
                    self._publish_clock(log_time)
                self.publishers[topic].publish(raw)
                published += 1
            if not loop:
                break
        while linger is not None and linger() and not stop.is_set():
            if clock:
                self._publish_clock(bag_now())
            time.sleep(0.01)
        self.flush()
        return published

    def wait_for_subscribers(self, count: int, timeout: float) -> Dict[str, int]:
        """Block until every played topic has `count` matched subscriptions (so nothing is
        published before a recorder or node listens); returns the topics still short."""
        deadline = time.monotonic() + timeout
        while True:
            short = {topic: publisher.get_subscription_count()
                     for topic, publisher in self.publishers.items()
                     if publisher is not None and publisher.get_subscription_count() < count}
            if not short or time.monotonic() > deadline:
                return short
            time.sleep(0.05)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until reliable subscribers acknowledged everything, so a process that exits
        right after playing does not lose its last messages."""
        for publisher in [p for p in self.publishers.values() if p is not None] + [self.clock]:
            publisher.wait_for_all_acked(Duration(seconds=timeout))


# --- record ------------------------------------------------------------------------------

class Recorder:
    """Subscribes (raw) to topics once they are discovered and writes what arrives, stamped with
    the receive time on the node's clock (the bag's clock under use_sim_time)."""

    def __init__(self, node: Node, path, topics: List[str], storage: str = 'mcap'):
        self.node, self.topics = node, list(topics)
        self.writer = open_writer(path, storage)
        self.lock = threading.Lock()
        self.connections = {}
        self.counts = {t: 0 for t in self.topics}
        self.closed = False

    def discover(self, timeout: float = 30.0) -> List[str]:
        """Subscribe to every topic whose type is known; returns those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            types = dict(self.node.get_topic_names_and_types())
            for topic in self.topics:
                if topic in self.connections or topic not in types:
                    continue
                msgtype = types[topic][0]
                cls = message_class(msgtype)
                with self.lock:
                    self.connections[topic] = self.writer.add_connection(
                        topic, msgtype, typestore=TYPESTORE,
                        offered_qos_profiles=[_bag_qos(True)])
                self.node.create_subscription(cls, topic, lambda raw, t=topic: self._on(t, raw),
                                              QoSProfile(depth=100), raw=True)
            missing = [t for t in self.topics if t not in self.connections]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    def _on(self, topic: str, raw: bytes):
        with self.lock:
            if self.closed:
                return
            self.writer.write(self.connections[topic], self.node.get_clock().now().nanoseconds,
                              raw)
            self.counts[topic] += 1

    def has_recorded(self, messages: int) -> bool:
        """True once every topic has `messages` messages written."""
        with self.lock:
            return all(count >= messages for count in self.counts.values())

    def close(self):
        with self.lock:
            if not self.closed:
                self.closed = True
                self.writer.close()


# --- evaluation --------------------------------------------------------------------------

def evaluate_bags(input_bag, results_bag, output, threshold=None, num_overlays: int = 8,
                  warn=print) -> dict:
    """Match results to inputs by header stamp; metrics (where the input bag has ground truth),
    latency (result receive time - input stamp, bag clock) and frames without a result."""
    from dbmr_ros.report import (CategoryResults, markdown_table, write_metrics, write_overlay)
    from dbmr_ros.visualize import display_range
    frames = read_frames(input_bag, warn=warn)
    frames = {s: f for s, f in frames.items() if 'rgb' in f}
    results: Dict[int, dict] = {}
    scoring = 'learned'
    result_cls = message_class('diagnostic_msgs/msg/DiagnosticArray')
    for connection, log_time, raw in read_messages(results_bag, set(RESULT_TOPICS), warn):
        if connection.topic == RESULT_TOPICS[0]:
            msg = decode(raw, result_cls, connection.topic, warn)
            if msg is None or not msg.status:
                continue
            values = {kv.key: kv.value for kv in msg.status[0].values}
            entry = results.setdefault(stamp_of(msg.header), {})
            entry.update(score=float(values['score']), latency_ms=(log_time - stamp_of(
                msg.header)) / 1e6, is_anomalous=values.get('is_anomalous') == 'true')
            if threshold is None and values.get('threshold') not in (None, 'None'):
                threshold = float(values['threshold'])
            scoring = values.get('scoring', scoring)
        else:
            msg = decode(raw, Image, connection.topic, warn)
            if msg is not None:
                results.setdefault(stamp_of(msg.header), {})['map'] = np.frombuffer(
                    msg.data, np.float32).reshape(msg.height, msg.width).copy()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / 'overlays').mkdir(exist_ok=True)
    matched = sorted(s for s in frames if 'score' in results.get(s, {}))
    missing = sorted(s for s in frames if s not in matched)
    latencies = np.array([results[s]['latency_ms'] for s in matched])
    summary = {'frames': len(frames), 'frames_with_result': len(matched),
               'frames_without_result': len(missing),
               'drop_rate': len(missing) / max(len(frames), 1),
               'latency_ms_p50': float(np.percentile(latencies, 50)) if matched else None,
               'latency_ms_p99': float(np.percentile(latencies, 99)) if matched else None,
               'latency_ms_max': float(latencies.max()) if matched else None,
               'scores': {str(s): results[s]['score'] for s in matched},
               'threshold': threshold, 'scoring': scoring, 'input_bag': str(input_bag),
               'results_bag': str(results_bag)}
    labelled = [s for s in matched if frames[s].get('gt') is not None
                and 'map' in results[s]]
    per_category = {}
    if labelled:
        collected = CategoryResults()
        for s in labelled:
            amap = results[s]['map']
            collected.add(int(frames[s]['gt'].any()), frames[s]['gt'], amap, None, None,
                          results[s]['score'])
        per_category['bag'] = collected.compute()
    step = max(len(matched) // max(num_overlays, 1), 1)
    for i, s in enumerate(matched[::step][:num_overlays]):
        frame, result = frames[s], results[s]
        if 'map' in result and 'xyz' in frame:
            write_overlay(output / 'overlays', f'frame_{i:03d}_{s}', frame['rgb'], frame['xyz'],
                          frame.get('gt'), result['map'], display_range(threshold, result['map']),
                          result['score'], threshold)
    document = write_metrics(output / 'metrics.json', per_category, summary) if per_category \
        else _write_json(output / 'metrics.json', summary)
    report = ['# Rosbag replay evaluation', '', f'- input bag: `{input_bag}`',
              f'- results bag: `{results_bag}`', '',
              '| frames | with result | without result | latency p50 ms | latency p99 ms |',
              '|---|---|---|---|---|',
              f'| {summary["frames"]} | {summary["frames_with_result"]} | '
              f'{summary["frames_without_result"]} | {_fmt(summary["latency_ms_p50"])} | '
              f'{_fmt(summary["latency_ms_p99"])} |', '']
    if per_category:
        report.append(markdown_table(per_category, 'Detection metrics', scoring))
    else:
        report.append('The input bag has no ground truth: scores, latency and drops only.')
    (output / 'report.md').write_text('\n'.join(report) + '\n')
    return document


def _fmt(value):
    return '-' if value is None else f'{value:.1f}'


def _write_json(path: Path, document: dict) -> dict:
    path.write_text(json.dumps(document, indent=2))
    return document


# --- commands ----------------------------------------------------------------------------

class _BackgroundSpin:
    """Spins one node in a thread; `stop()` ends the spin and joins the thread, so the node can
    be destroyed safely afterwards (destroying it under a running wait aborts the process)."""

    def __init__(self, node: Node, context=None):
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def stop(self):
        self.executor.shutdown()
        self.thread.join(timeout=10)


def _remaps(pairs) -> Dict[str, str]:
    remap = {}
    for pair in pairs or []:
        if ':=' not in pair:
            raise BagError(f'--remap expects from:=to, got {pair!r}')
        source, target = pair.split(':=', 1)
        remap[source] = target
    return remap


def cmd_play(args) -> int:
    rclpy.init()
    node = Node('dbmr_bag_player')
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        player = Player(node, args.bag, set(args.topics) if args.topics else None,
                        _remaps(args.remap), args.reliable,
                        warn=lambda m: node.get_logger().warning(m))
        short = player.wait_for_subscribers(args.wait_for_subscribers, args.wait_timeout)
        if short:
            raise BagError(f'after {args.wait_timeout:g} s these topics have fewer than '
                           f'{args.wait_for_subscribers} subscribers (topic: count): {short}')
        time.sleep(args.delay)
        count = player.play(args.rate, args.clock, args.loop, stop=stop)
        print(f'published {count} messages from {args.bag}')
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def cmd_record(args) -> int:
    rclpy.init()
    node = Node('dbmr_bag_recorder', parameter_overrides=[
        rclpy.parameter.Parameter('use_sim_time', value=args.use_sim_time)])
    recorder = Recorder(node, args.output, args.topics, args.storage)
    spinner = _BackgroundSpin(node)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        missing = recorder.discover(args.discovery_timeout)
        if missing:
            node.get_logger().warning(f'not (yet) published, not recorded: {missing}')
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline) \
                and not (args.messages and recorder.has_recorded(args.messages)):
            stop.wait(0.05)
    finally:
        recorder.close()
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'recorded {recorder.counts} to {args.output}')
    return 0


def cmd_eval(args) -> int:
    document = evaluate_bags(args.input, args.results, args.output, args.threshold,
                             args.num_overlays)
    print_summary(document, Path(args.output))
    return 0


def print_summary(document: dict, output: Path) -> None:
    mean = document.get('mean', {})

    def fmt(value, digits=3):
        return '-' if value is None else f'{value:.{digits}f}'
    print('| frames | I-AUROC | P-AUROC | AUPRO@0.3 | latency p50 ms | latency p99 ms | '
          'frames without result |')
    print('|---|---|---|---|---|---|---|')
    print(f'| {document["frames"]} | {fmt(mean.get("i_auroc"))} | {fmt(mean.get("p_auroc"))} '
          f'| {fmt(mean.get("aupro@0.3"))} | {fmt(document["latency_ms_p50"], 1)} | '
          f'{fmt(document["latency_ms_p99"], 1)} | {document["frames_without_result"]} |')
    print(f'report: {output / "report.md"}\noverlays: {output / "overlays"}')


def replay_eval(bag, output, model_path='', device='auto', rate=1.0, lockstep=True,
                timeout=120.0, log=print) -> dict:
    """Start the node (use_sim_time, reliable inputs), play the bag with /clock, record the
    results, evaluate. Returns the evaluation document."""
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        raise BagError(f'{output} already holds results; choose another --output')
    output.mkdir(parents=True, exist_ok=True)
    results_bag = output / 'results_bag'
    node_log = open(output / 'node.log', 'w')
    command = [str(Path(sys.executable).parent / 'dbmr-detect'), '--ros-args',
               '-p', f'model_path:={model_path}', '-p', f'device:={device}',
               '-p', 'input_qos:=default', '-p', 'use_sim_time:=true',
               '-r', f'image:={TOPICS["image"]}', '-r', f'points:={TOPICS["points"]}',
               '-r', f'camera_info:={TOPICS["camera_info"]}']
    detector = subprocess.Popen(command, stdout=node_log, stderr=subprocess.STDOUT)
    context = rclpy.Context()  # private: callers may have their own rclpy running
    rclpy.init(context=context)
    node = Node('dbmr_replay_eval', context=context, parameter_overrides=[
        rclpy.parameter.Parameter('use_sim_time', value=True)])
    spinner = _BackgroundSpin(node, context)
    recorder = None
    try:
        player = Player(node, bag, {TOPICS['image'], TOPICS['points'], TOPICS['camera_info']},
                        reliable=True, warn=log)
        frames = sorted(t for t, topic, _ in player.messages if topic == TOPICS['image'])
        deadline = time.monotonic() + timeout
        image_pub, points_pub = player.publishers[TOPICS['image']], player.publishers[
            TOPICS['points']]
        while time.monotonic() < deadline and not (
                image_pub.get_subscription_count() and points_pub.get_subscription_count()
                and all(node.count_publishers(t) for t in RESULT_TOPICS)):
            if detector.poll() is not None:
                raise BagError(f'the detector exited with {detector.returncode}: '
                               f'{(output / "node.log").read_text()}')
            time.sleep(0.1)
        recorder = Recorder(node, results_bag, list(RESULT_TOPICS))
        missing = recorder.discover(max(deadline - time.monotonic(), 1.0))
        if missing:
            raise BagError(f'the detector did not come up (no {missing}); see '
                           f'{output / "node.log"}')
        log(f'replaying {len(frames)} frames of {bag} through the detector '
            f'({"lockstep" if lockstep else f"rate {rate}"})')

        def done_count():
            return recorder.counts[RESULT_TOPICS[0]]
        sent = {'frames': 0}

        def gate(topic, _):
            # Lockstep: the next frame's image waits for the previous frame's result.
            if topic != TOPICS['image']:
                return True
            ready = not lockstep or done_count() >= sent['frames']
            if ready:
                sent['frames'] += 1
            return ready
        finished = time.monotonic() + timeout
        progress = {'counts': None, 'since': time.monotonic()}

        def linger():
            """Keep /clock running until every frame's result and map are recorded, or until
            nothing new has arrived for 5 s (frames the node dropped never get one)."""
            counts = [recorder.counts[t] for t in RESULT_TOPICS]
            if counts != progress['counts']:
                progress.update(counts=counts, since=time.monotonic())
            return (min(counts) < len(frames) and time.monotonic() - progress['since'] < 5.0
                    and time.monotonic() < finished)
        player.play(rate, clock=True, gate=gate, gate_timeout=timeout / 4, linger=linger)
    finally:
        if recorder is not None:
            recorder.close()
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if detector.poll() is None:
            detector.send_signal(signal.SIGINT)
            try:
                detector.wait(timeout=15)
            except subprocess.TimeoutExpired:
                detector.kill()
        node_log.close()
    return evaluate_bags(bag, results_bag, output / 'eval', warn=log)


def cmd_replay_eval(args) -> int:
    document = replay_eval(args.bag, args.output, args.model_path, args.device, args.rate,
                           not args.realtime, args.timeout)
    print_summary(document, Path(args.output) / 'eval')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-bag', description=__doc__.split('\n')[0])
    parser.add_argument('--dds-defaults', action='store_true',
                        help="keep Fast DDS's defaults instead of config/fastdds_large_data.xml "
                             '(100 ms heartbeat: a lost fragment of a large message is resent '
                             'within 0.1 s, not 3 s); a FASTDDS_DEFAULT_PROFILES_FILE you set '
                             'always wins')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('from-dataset', help='write a dataset split as a labelled sensor bag')
    p.add_argument('--dataset', required=True, choices=DATASETS)
    p.add_argument('--data-root', required=True)
    p.add_argument('--category', required=True)
    p.add_argument('--split', default='test', choices=('train', 'validation', 'test'))
    p.add_argument('--output', required=True, help='bag folder to create')
    p.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    p.add_argument('--rate', type=float, default=2.0, help='frames per second of the stamps')
    p.add_argument('--frame-id', default='camera_color_optical_frame')
    p.set_defaults(func=lambda a: from_dataset(a) and 0)
    p = sub.add_parser('play', help='publish a bag over ROS 2')
    p.add_argument('bag')
    p.add_argument('--rate', type=float, default=1.0)
    p.add_argument('--clock', action='store_true', help='publish /clock (for use_sim_time)')
    p.add_argument('--loop', action='store_true')
    p.add_argument('--topics', nargs='+', help='only these topics')
    p.add_argument('--remap', nargs='+', help='from:=to topic remappings')
    p.add_argument('--reliable', action='store_true',
                   help='publish reliably whatever QoS the bag recorded')
    p.add_argument('--delay', type=float, default=0.5, help='seconds to wait before playing')
    p.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                   help='before playing, wait until every topic has N subscribers (a recorder '
                   'or node that must not miss the first message)')
    p.add_argument('--wait-timeout', type=float, default=30.0,
                   help='seconds --wait-for-subscribers waits before giving up (exit 2)')
    p.set_defaults(func=cmd_play)
    p = sub.add_parser('record', help='record topics to a bag')
    p.add_argument('topics', nargs='+')
    p.add_argument('--output', required=True)
    p.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    p.add_argument('--use-sim-time', action='store_true', help='stamp with /clock time')
    p.add_argument('--duration', type=float, default=0.0, help='seconds (0: until Ctrl-C)')
    p.add_argument('--discovery-timeout', type=float, default=10.0)
    p.add_argument('--messages', type=int, default=0, metavar='N',
                   help='stop once every topic has N messages recorded (0: no limit)')
    p.set_defaults(func=cmd_record)
    p = sub.add_parser('eval', help='evaluate a results bag against an input bag')
    p.add_argument('--input', required=True, help='the bag that was played')
    p.add_argument('--results', required=True, help='the recorded detector outputs')
    p.add_argument('--output', required=True)
    p.add_argument('--threshold', type=float, help='default: the one the node reported')
    p.add_argument('--num-overlays', type=int, default=8)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser('replay-eval', help='node + play + record + eval in one command')
    p.add_argument('--bag', required=True)
    p.add_argument('--output', required=True)
    p.add_argument('--model-path', default='', help='default: the shipped model')
    p.add_argument('--device', default='auto')
    p.add_argument('--rate', type=float, default=1.0)
    p.add_argument('--realtime', action='store_true', help='recorded timing instead of '
                   'lockstep (frames the node cannot keep up with are dropped and counted)')
    p.add_argument('--timeout', type=float, default=120.0)
    p.set_defaults(func=cmd_replay_eval)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.dds_defaults:
        use_dds_defaults()
    else:
        use_large_data_profile()
    try:
        return int(args.func(args) or 0)
    except (BagError, DatasetError, FileExistsError, ValueError) as error:
        print(f'dbmr-bag: error: {error}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
