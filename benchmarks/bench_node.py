"""The detector node's real-time behaviour over real ROS 2 (not a test).

Prints:
1. conversion + publishing overhead per 640x480 frame (real TUM RGB-D frame): message ->
   arrays, and arrays -> the node's output messages (32FC1 map, bgr8 heatmap, coloured
   cloud, markers: dbmr_ros/ros/outputs.py, as the node builds them),
2. end-to-end latency, publish -> ~/result received, one frame at a time (results of sent),
3. a 30 Hz stream for 30 s: frames published / processed / dropped by the node / lost before
   it, latency p50/p99, and the node's resident memory before and after.
--table runs 2 and 3 for the shipped DDS profile and Fast DDS defaults, each with best-effort
(sensor_data) and reliable inputs, and prints a Markdown table of frames lost.

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=77 \
        .venv/bin/python benchmarks/bench_node.py [--model PATH] [--seconds 30] [--hz 30]
        [--input-qos default|sensor_data] [--dds-defaults] [--table]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Header

from dbmr_ros.data.sample import valid_mask
from dbmr_ros.resources import default_model_path, use_dds_defaults, use_large_data_profile
from dbmr_ros.ros import outputs, result_message
from dbmr_ros.ros.conversions import (cloud_from_arrays, cloud_to_xyz, image_from_array,
                                      image_to_rgb)

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data'
os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')


def tum_frame():
    directory = SHARED / 'rgbd_frames'
    rgb = cv2.cvtColor(cv2.imread(str(directory / 'TUM_color.png')), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(directory / 'TUM_depth.png'), cv2.IMREAD_UNCHANGED) / 5000.0
    v, u = np.mgrid[0:480, 0:640]
    xyz = np.stack([(u - 319.5) * depth / 525.0, (v - 239.5) * depth / 525.0, depth], -1)
    return rgb, xyz.astype(np.float32)


def conversion_overhead(frames: int = 50) -> dict:
    """Per 640x480 frame: input messages -> arrays, and the node's output messages (the same
    functions the node calls: map, heatmap, coloured cloud, markers)."""
    rgb, xyz = tum_frame()
    header = Header(frame_id='camera')
    image_msg = image_from_array(rgb, 'rgb8', header)
    cloud_msg = cloud_from_arrays(xyz, header=header)
    # A map like the model's: smooth, two defect-sized blobs above the threshold (a map of
    # random noise would make thousands of one-pixel regions that no real map has).
    v, u = np.mgrid[0:480, 0:640]
    anomaly = (0.2 + np.exp(-((u - 200) ** 2 + (v - 150) ** 2) / 800.0)
               + 0.8 * np.exp(-((u - 450) ** 2 + (v - 300) ** 2) / 400.0)).astype(np.float32)
    threshold = 0.6
    inputs, outputs_ms = [], []
    for _ in range(frames):
        start = time.perf_counter()
        image_to_rgb(image_msg)
        points = cloud_to_xyz(cloud_msg)
        valid = valid_mask(points)
        middle = time.perf_counter()
        image_from_array(anomaly, '32FC1', header)
        colours = outputs.anomaly_colours(anomaly, threshold)
        outputs.heatmap_message(rgb, colours, 0.5, header)
        outputs.cloud_message(points, valid, colours, anomaly, header)
        outputs.markers_message(header, points, valid, float(anomaly.max()), True, anomaly,
                                threshold)
        end = time.perf_counter()
        inputs.append((middle - start) * 1e3)
        outputs_ms.append((end - middle) * 1e3)
    return {'inputs_ms': statistics.median(inputs), 'outputs_ms': statistics.median(outputs_ms)}


def rss_mb(pid: int) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1]) / 1024.0
    return float('nan')


class Probe(Node):
    def __init__(self, qos):
        super().__init__('dbmr_bench_probe')
        self.pub_image = self.create_publisher(Image, 'image', qos)
        self.pub_points = self.create_publisher(PointCloud2, 'points', qos)
        self.sent, self.received, self.processing, self.dropped = {}, {}, {}, 0
        self.counts = []  # (frames received, frames dropped) of each /diagnostics message
        self.lock = threading.Lock()
        self.create_subscription(DiagnosticArray, '/dbmr_detector/result', self._on_result, 100)
        self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_result(self, msg):
        result = result_message.decode(msg)
        with self.lock:
            self.received[result.stamp_ns] = time.perf_counter()
            self.processing[result.stamp_ns] = result.timings_ms

    def _on_diagnostics(self, msg):
        values = {kv.key: kv.value for kv in msg.status[0].values}
        with self.lock:
            self.dropped = int(values.get('frames_dropped', 0))
            self.counts.append((values.get('frames_received'), self.dropped))

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 30.0):
        """Until no result has arrived for `quiet` seconds (the node has caught up)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                last = max(self.received.values(), default=0.0)
            if time.perf_counter() - last > quiet:
                return
            time.sleep(0.05)

    def wait_counts_final(self, timeout: float = 15.0):
        """Until two consecutive /diagnostics (1 Hz) report the same counts: the node's drop
        count then includes every frame of the stream."""
        with self.lock:
            seen = len(self.counts)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.counts) >= seen + 2 and self.counts[-1] == self.counts[-2]:
                    return
            time.sleep(0.05)

    def publish(self, image: Image, cloud: PointCloud2, stamp: int):
        image.header.stamp.sec, image.header.stamp.nanosec = divmod(stamp, 10**9)
        cloud.header.stamp = image.header.stamp
        with self.lock:
            self.sent[stamp] = time.perf_counter()
        self.pub_image.publish(image)
        self.pub_points.publish(cloud)


def percentile(values, q) -> str:
    return f'{np.percentile(values, q):.1f} ms' if len(values) else 'n/a'


def measure(args) -> dict:
    """One configuration (DDS profile and input QoS as set up by main): latency one frame at a
    time, then the stream; prints and returns the figures."""
    from dbmr_ros.data import open_dataset
    sample = open_dataset('mvtec3d', SHARED / 'mvtec3d', 'cable_gland', 'test')[6].load()
    node = subprocess.Popen([str(Path(sys.executable).parent / 'dbmr-detect'), '--ros-args',
                             '-p', f'model_path:={args.model}', '-p', 'device:=cpu',
                             '-p', f'input_qos:={args.input_qos}'],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rclpy.init()
    probe = Probe(qos_profile_sensor_data if args.input_qos == 'sensor_data' else
                  QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(probe)
    threading.Thread(target=executor.spin, daemon=True).start()
    figures = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (probe.pub_image.get_subscription_count()
                                                   and probe.count_publishers(
                                                       '/dbmr_detector/result')):
            time.sleep(0.1)
        header = Header(frame_id='camera')
        points = np.where(valid_mask(sample.xyz)[..., None], sample.xyz, np.nan)
        image = image_from_array(sample.rgb, 'rgb8', header)
        cloud = cloud_from_arrays(points.astype(np.float32), header=header)
        # 2. one frame at a time: the first 5 cover discovery and warm-up
        latencies, processing, stamp, sent_one = [], [], 10**18, 0
        for i in range(5 + args.frames):
            stamp += 10**8
            probe.publish(image, cloud, stamp)
            end = time.monotonic() + 5
            while stamp not in probe.received and time.monotonic() < end:
                time.sleep(0.001)
            if i >= 5:
                sent_one += 1
                if stamp in probe.received:
                    latencies.append((probe.received[stamp] - probe.sent[stamp]) * 1e3)
                    processing.append(probe.processing[stamp])
        figures['one_at_a_time'] = {'sent': sent_one, 'results': len(latencies),
                                    'p50_ms': float(np.median(latencies)) if latencies else None}
        print(f'one at a time (400x400 cable_gland frame): {len(latencies)} results of {sent_one}'
              f' frames; publish -> ~/result p50 {percentile(latencies, 50)}, p99 '
              f'{percentile(latencies, 99)}' + ('; in the node, p50 ms: ' + ', '.join(
                  f'{key} {np.median([p[key] for p in processing]):.1f}'
                  for key in processing[0]) if processing else ''))
        # 3. the stream
        probe.wait_quiet()
        probe.wait_counts_final()
        rss_before = rss_mb(node.pid)
        dropped_before = probe.dropped
        first = stamp + 10**9
        count = int(args.seconds * args.hz)
        start = time.perf_counter()
        for i in range(count):
            target = start + i / args.hz
            while time.perf_counter() < target:
                time.sleep(0.0005)
            probe.publish(image, cloud, first + i * int(1e9 / args.hz))
        probe.wait_quiet()
        probe.wait_counts_final()
        rss_after = rss_mb(node.pid)
        stream = [s for s in probe.received if s >= first]
        lat = [(probe.received[s] - probe.sent[s]) * 1e3 for s in stream]
        dropped = probe.dropped - dropped_before
        lost = count - len(stream) - dropped
        figures['stream'] = {'published': count, 'processed': len(stream), 'dropped': dropped,
                             'lost': lost, 'p50_ms': float(np.median(lat)) if lat else None}
        print(f'{args.hz:.0f} Hz stream for {args.seconds:.0f} s: published {count}, processed '
              f'{len(stream)}, dropped by the node (latest wins) {dropped}, lost before the node'
              f' (not received) {lost}; latency p50 {percentile(lat, 50)}, p99 '
              f'{percentile(lat, 99)}; node RSS {rss_before:.0f} MB -> {rss_after:.0f} MB '
              f'({rss_after - rss_before:+.0f} MB)')
    finally:
        executor.shutdown()
        probe.destroy_node()
        rclpy.try_shutdown()
        node.terminate()
        node.wait(timeout=15)
    return figures


CONFIGURATIONS = [(dds, qos) for dds in ('profile', 'defaults')
                  for qos in ('sensor_data', 'default')]


def table(args) -> int:
    """Every configuration in its own process (the DDS profile is read at rclpy.init)."""
    rows = []
    for dds, qos in CONFIGURATIONS:
        print(f'--- {dds}, input_qos {qos}', flush=True)
        command = [sys.executable, __file__, '--model', args.model, '--seconds',
                   str(args.seconds), '--hz', str(args.hz), '--frames', str(args.frames),
                   '--input-qos', qos, '--json'] + (['--dds-defaults'] if dds == 'defaults'
                                                    else [])
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=900)
            print(run.stdout.rsplit('\n', 2)[0], flush=True)
            rows.append((dds, qos, json.loads(run.stdout.strip().splitlines()[-1])))
        except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError) as error:
            print(f'no figures from this configuration: {type(error).__name__}', flush=True)

    def ms(value):
        return '-' if value is None else f'{value:.0f}'
    print(f'\n| DDS | input QoS | one at a time: results / sent | p50 ms | {args.hz:.0f} Hz: '
          'published | processed | dropped by the node | lost | p50 ms |\n'
          '|---|---|---|---|---|---|---|---|---|')
    for dds, qos, f in rows:
        one, stream = f['one_at_a_time'], f['stream']
        name = 'shipped profile' if dds == 'profile' else 'Fast DDS defaults'
        qos_name = 'best effort' if qos == 'sensor_data' else 'reliable'
        print(f'| {name} | {qos_name} | {one["results"]} / {one["sent"]} | {ms(one["p50_ms"])} '
              f'| {stream["published"]} | {stream["processed"]} | {stream["dropped"]} | '
              f'{stream["lost"]} | {ms(stream["p50_ms"])} |')
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default=str(default_model_path()))
    parser.add_argument('--seconds', type=float, default=30.0)
    parser.add_argument('--hz', type=float, default=30.0)
    parser.add_argument('--frames', type=int, default=20, help='frames sent one at a time')
    parser.add_argument('--input-qos', default='default', choices=('default', 'sensor_data'),
                        help='reliable (default) or best effort, as camera drivers publish')
    parser.add_argument('--dds-defaults', action='store_true',
                        help="Fast DDS's defaults instead of config/fastdds_large_data.xml")
    parser.add_argument('--table', action='store_true', help='every configuration (shipped '
                        'profile / defaults x best effort / reliable), with a Markdown table')
    parser.add_argument('--json', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        return table(args)
    if args.dds_defaults:
        use_dds_defaults()
    profile = "Fast DDS defaults" if args.dds_defaults else use_large_data_profile()
    print(f'DDS profile: {profile}; input_qos {args.input_qos}')
    if not args.json:
        overhead = conversion_overhead()
        print(f'conversion (Image + PointCloud2 -> arrays), 640x480: '
              f'{overhead["inputs_ms"]:.2f} ms; output messages (map, heatmap, cloud, markers): '
              f'{overhead["outputs_ms"]:.2f} ms; total {sum(overhead.values()):.2f} ms')
    figures = measure(args)
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == '__main__':
    sys.exit(main())
