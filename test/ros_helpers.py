"""Helpers for tests that run real ROS 2 processes over Fast DDS (loopback only)."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Bool, Float32, Header
from visualization_msgs.msg import MarkerArray

from dbmr_ros.ros import result_message
from dbmr_ros.ros.conversions import cloud_from_arrays, image_from_array, stamp_ns as stamp_of

BIN = Path(sys.executable).parent
OUTPUTS = {'anomaly_score': Float32, 'is_anomalous': Bool, 'anomaly_map': Image,
           'heatmap': Image, 'cloud': PointCloud2, 'markers': MarkerArray,
           'result': DiagnosticArray}


def header(stamp_ns: int, frame_id: str = 'camera_optical_frame') -> Header:
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                  frame_id=frame_id)


class NodeProcess:
    """`dbmr-detect` in its own process; its output goes to a log file."""

    def __init__(self, log_path: Path, *ros_args: str, executable='dbmr-detect'):
        self.log_path = log_path
        self.log = open(log_path, 'w')
        self.proc = subprocess.Popen([str(BIN / executable), '--ros-args', *ros_args],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED='1'))

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Probe(Node):
    """Publishes sensor frames and records everything the detector publishes."""

    def __init__(self, detector='/dbmr_detector', input_qos=qos_profile_sensor_data):
        super().__init__(f'dbmr_probe_{os.getpid()}')
        self.pub_image = self.create_publisher(Image, 'image', input_qos)
        self.pub_points = self.create_publisher(PointCloud2, 'points', input_qos)
        self.pub_info = self.create_publisher(CameraInfo, 'camera_info', input_qos)
        self.lock = threading.Lock()
        self.received = {name: [] for name in OUTPUTS}
        self.received['diagnostics'] = []
        for name, kind in OUTPUTS.items():
            self.create_subscription(kind, f'{detector}/{name}',
                                     lambda m, n=name: self._store(n, m), 10)
        self.create_subscription(DiagnosticArray, '/diagnostics',
                                 lambda m: self._store('diagnostics', m), 10)
        self.executor_ = SingleThreadedExecutor()
        self.executor_.add_node(self)
        self.thread = threading.Thread(target=self.executor_.spin, daemon=True)
        self.thread.start()

    def _store(self, name, msg):
        with self.lock:
            self.received[name].append(msg)

    def clear(self):
        with self.lock:
            for messages in self.received.values():
                messages.clear()

    def messages(self, name):
        with self.lock:
            return list(self.received[name])

    def wait_for(self, predicate, timeout=30.0, period=0.05) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(period)
        return False

    def wait_connected(self, node: NodeProcess, timeout=60.0):
        ok = self.wait_for(lambda: self.pub_image.get_subscription_count() > 0
                           and self.pub_points.get_subscription_count() > 0
                           and all(self.count_publishers(f'/dbmr_detector/{n}') > 0
                                   for n in OUTPUTS), timeout)
        assert ok, f'detector did not come up:\n{node.output()}'

    def publish_frame(self, rgb, xyz, stamp_ns, frame_id='camera_optical_frame',
                      image_encoding='rgb8'):
        h = header(stamp_ns, frame_id)
        image = rgb[..., ::-1] if image_encoding == 'bgr8' else rgb
        self.pub_image.publish(image_from_array(image, image_encoding, h))
        self.pub_points.publish(cloud_from_arrays(xyz, header=h))

    def result_for(self, stamp_ns):
        for msg in self.messages('result'):
            if stamp_of(msg.header) == stamp_ns:
                return msg
        return None

    def send_until_result(self, rgb, xyz, stamp_ns, timeout=60.0, **kwargs):
        """Best-effort inputs may be lost while discovery settles: resend until a result."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.publish_frame(rgb, xyz, stamp_ns, **kwargs)
            if self.wait_for(lambda: self.result_for(stamp_ns) is not None, timeout=3.0):
                return self.result_for(stamp_ns)
        return None

    def close(self):
        self.executor_.shutdown()
        self.thread.join(timeout=10)  # never destroy a node under a running wait
        self.destroy_node()


def result_score(msg: DiagnosticArray) -> float:
    return result_message.decode(msg).score


def ensure_rclpy():
    if not rclpy.ok():
        rclpy.init()
