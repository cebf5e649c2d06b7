"""The dbmr_detector node: synchronised RGB + point cloud in, anomaly scores, maps, heatmaps,
coloured clouds, markers and diagnostics out.

Callbacks only convert stamps and hand the newest synchronised pair to one inference worker
(latest wins); older pairs waiting there are dropped and counted, so latency stays bounded when
inference is slower than the sensor. All inference goes through `dbmr_ros.detector.Detector`.
"""
import math
import sys
import threading
import time
from typing import Optional

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data, QoSProfile
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Bool, Float32
from visualization_msgs.msg import MarkerArray

from dbmr_ros.checkpoint import CheckpointError
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.detector import Detector
from dbmr_ros.resources import default_model_path, use_large_data_profile
from dbmr_ros.ros.conversions import (ConversionError, frame_to_arrays, image_from_array,
                                      intrinsics_from_camera_info, stamp_ns)
from dbmr_ros.ros import outputs, parameters, result_message
from dbmr_ros.ros.diagnostics import FrameCounters
from dbmr_ros.ros.frame_worker import FaultThrottle, LatestWins, RateLimit
from dbmr_ros.ros.sync import ApproximateTimeSync

NODE_NAME = 'dbmr_detector'


class DetectorNode(Node):
    def __init__(self, **kwargs):
        super().__init__(NODE_NAME, **kwargs)
        parameters.declare(self)
        self.counters = FrameCounters()
        self._warned = set()
        self._camera_k: Optional[np.ndarray] = None
        self.frames = LatestWins()
        self.rate_limit = RateLimit(lambda: self.get_parameter('max_rate_hz').value)
        self.faults = FaultThrottle(period=2.0)

        model_path = self.get_parameter('model_path').value or str(default_model_path())
        self.model_path = model_path
        self.detector: Optional[Detector] = None
        self._startup_error: Optional[Exception] = None
        self._loaded = threading.Event()
        # Every torch call (loading, warm-up, inference) runs on this one thread: once a second
        # thread has run torch's OpenMP parallel regions, libgomp stops spin-waiting and every
        # op pays for waking its workers (network 48 -> 104 ms per frame on 2 cores).
        self.worker = threading.Thread(target=self._work,
                                       args=(model_path, self.get_parameter('device').value,
                                             self.get_parameter('scoring').value or None),
                                       name='dbmr-inference', daemon=True)
        self.worker.start()
        self._loaded.wait()
        if self._startup_error is not None:
            self.get_logger().fatal(f'cannot load the model: {self._startup_error}')
            raise self._startup_error
        threshold = self.get_parameter('threshold').value
        if threshold >= 0:
            self.detector.threshold = threshold
        self.get_logger().info(
            f'model {model_path} ({self.detector.meta.dataset}/{self.detector.meta.category}, '
            f'{self.detector.scoring} scoring, threshold {self.detector.threshold}) on '
            f'{self.detector.device}')

        qos = (qos_profile_sensor_data if self.get_parameter('input_qos').value == 'sensor_data'
               else QoSProfile(depth=10))
        self.sync = self._make_synchronizer(qos)
        self.create_subscription(CameraInfo, 'camera_info', self._on_camera_info, qos)
        self.pub_score = self.create_publisher(Float32, '~/anomaly_score', 10)
        self.pub_flag = self.create_publisher(Bool, '~/is_anomalous', 10)
        self.pub_map = self.create_publisher(Image, '~/anomaly_map', 10)
        self.pub_heatmap = self.create_publisher(Image, '~/heatmap', 10)
        self.pub_cloud = self.create_publisher(PointCloud2, '~/cloud', 10)
        self.pub_markers = self.create_publisher(MarkerArray, '~/markers', 10)
        self.pub_result = self.create_publisher(DiagnosticArray, '~/result', 10)
        self.pub_diagnostics = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.add_on_set_parameters_callback(self._validate_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.create_timer(1.0, self._publish_diagnostics)

    # --- parameters ----------------------------------------------------------------------

    def _validate_parameters(self, params) -> SetParametersResult:
        """On-set: accept or refuse, with no side effects (rclpy may still refuse the set)."""
        for p in params:
            if p.name == 'threshold' and not math.isfinite(p.value):
                return SetParametersResult(successful=False,
                                           reason='threshold must be a finite number')
        return SetParametersResult(successful=True)

    def _apply_parameters(self, params) -> None:
        """Post-set: apply what was accepted."""
        for p in params:
            if p.name == 'threshold':
                self.detector.threshold = p.value if p.value >= 0 else \
                    self.detector.calibrated_threshold
                self.get_logger().info(f'threshold set to {self.detector.threshold}')

    # --- inputs --------------------------------------------------------------------------

    def _make_synchronizer(self, qos):
        slop = self.get_parameter('sync_slop').value
        queue = self.get_parameter('sync_queue_size').value
        try:
            import message_filters
        except ImportError:
            message_filters = None
        if message_filters is not None:
            subs = [message_filters.Subscriber(self, Image, 'image', qos_profile=qos),
                    message_filters.Subscriber(self, PointCloud2, 'points', qos_profile=qos)]
            sync = message_filters.ApproximateTimeSynchronizer(subs, queue, slop)
            sync.registerCallback(self._on_pair)
            return sync
        sync = ApproximateTimeSync(2, queue, slop, self._on_pair, on_reset=self._on_sync_reset)
        self.create_subscription(Image, 'image', lambda m: self._offer(sync, 0, m), qos)
        self.create_subscription(PointCloud2, 'points', lambda m: self._offer(sync, 1, m), qos)
        return sync

    def _offer(self, sync, index, msg):
        sync.add(index, stamp_ns(msg.header), msg)

    def _on_sync_reset(self):
        self.get_logger().warning('input stamps went backwards (looping bag or restarted '
                                  'sensor): synchroniser reset', throttle_duration_sec=5.0)

    def _on_camera_info(self, msg: CameraInfo):
        self._camera_k = intrinsics_from_camera_info(msg)

    def _on_pair(self, image: Image, cloud: PointCloud2):
        """Latest wins: replace (and count) a pair the worker has not started yet."""
        self.counters.arrived(replaced_waiting=self.frames.offer((image, cloud)))

    # --- inference worker ----------------------------------------------------------------

    def _load(self, model_path: str, device: str, scoring: Optional[str]) -> bool:
        """Load and warm up the model (on the inference thread); False on failure."""
        try:
            self.detector = Detector.from_checkpoint(model_path, device, scoring=scoring)
            if not self.detector.warm_up():
                self.get_logger().info('warm-up skipped: the synthetic warm-up frame does not '
                                       'suit this preprocessing config')
            return True
        except Exception as error:  # noqa: BLE001 - re-raised by the constructor
            self._startup_error = error
            return False
        finally:
            self._loaded.set()

    def _work(self, model_path: str, device: str, scoring: Optional[str]):
        if not self._load(model_path, device, scoring):
            return
        while True:
            pair = self.frames.take()
            if pair is None:  # closed: the node is shutting down
                return
            image, cloud = pair
            if not self.rate_limit.allow():
                self.counters.rate_limited += 1
                continue
            try:
                self._process(image, cloud)
            except (ConversionError, ValueError, RuntimeError) as error:
                self._fail(stamp_ns(image.header), 'skipped', error)
            except Exception as error:  # noqa: BLE001 - one bad frame must not kill the node
                self._fail(stamp_ns(image.header), f'failed ({type(error).__name__})', error)

    def _fail(self, stamp: int, what: str, error: Exception):
        """Count and report a failed frame (each distinct fault at most every 2 s)."""
        reason = f'{what}: {error}'
        self.counters.error(f'frame {stamp} {reason}')
        line = self.faults.report(reason)
        if line is not None:
            self.get_logger().error(f'frame {stamp} {line}')

    def frame_arrays(self, image: Image, cloud: PointCloud2):
        """Messages -> (rgb (H, W, 3) uint8, xyz (H, W, 3) float32 registered to the image)."""
        limit = self.get_parameter('max_input_pixels').value
        for what, msg in (('image', image), ('cloud', cloud)):
            if msg.height * msg.width > limit:
                raise ConversionError(f'{what} of {msg.width}x{msg.height} exceeds '
                                      f'max_input_pixels {limit}')
        if cloud.height <= 1 and self._camera_k is None and 'no_intrinsics' not in self._warned:
            self._warned.add('no_intrinsics')
            self.get_logger().warning('unorganized point cloud and no camera_info received: '
                                      'frames are skipped until intrinsics arrive')
        return frame_to_arrays(image, cloud, self._camera_k)

    def _process(self, image: Image, cloud: PointCloud2):
        started = time.perf_counter()
        rgb, xyz = self.frame_arrays(image, cloud)
        valid = valid_mask(xyz)  # once per frame: the check, the output cloud, the markers
        if not valid.any():
            raise ConversionError('the point cloud has no finite point other than (0, 0, 0)')
        result = self.detector(rgb, xyz)
        header = image.header
        self.pub_result.publish(self.result_message(header, result, started))
        self.pub_score.publish(Float32(data=float(result.score)))
        self.pub_flag.publish(Bool(data=bool(result.is_anomalous)))
        if self.pub_map.get_subscription_count():
            self.pub_map.publish(image_from_array(result.anomaly_map, '32FC1', header))
        want_heatmap = self.pub_heatmap.get_subscription_count() > 0
        want_cloud = self.get_parameter('publish_cloud').value and \
            self.pub_cloud.get_subscription_count() > 0
        if want_heatmap or want_cloud:
            colours = outputs.anomaly_colours(result.anomaly_map, self.detector.threshold)
        if want_heatmap:
            self.pub_heatmap.publish(outputs.heatmap_message(
                rgb, colours, self.get_parameter('heatmap_alpha').value, header))
        if want_cloud:
            self.pub_cloud.publish(outputs.cloud_message(xyz, valid, colours,
                                                         result.anomaly_map, header))
        if self.pub_markers.get_subscription_count():
            self.pub_markers.publish(outputs.markers_message(
                header, xyz, valid, result.score, result.is_anomalous, result.anomaly_map,
                self.detector.threshold))
        self.counters.done((time.perf_counter() - started) * 1e3)

    def result_message(self, header, result, started: float) -> DiagnosticArray:
        return result_message.encode(self.get_name(), header, result, self.detector.threshold,
                                     (time.perf_counter() - started) * 1e3)

    # --- diagnostics ---------------------------------------------------------------------

    def _publish_diagnostics(self):
        msg = DiagnosticArray(status=[self.counters.status(
            self.get_name(), str(self.detector.device), self.model_path, self.detector.threshold)])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diagnostics.publish(msg)

    def destroy_node(self):
        self.frames.close()
        if self.worker.is_alive():
            self.worker.join(timeout=5.0)
        return super().destroy_node()


def main(args=None) -> int:
    # Its outputs (map, heatmap, cloud) are multi-MB too: the large-data profile unless the
    # user chose one (config/fastdds_large_data.xml says why).
    use_large_data_profile()
    rclpy.init(args=args)
    try:
        node = DetectorNode()
    except (CheckpointError, RuntimeError, OSError, ValueError) as error:
        print(f'{NODE_NAME}: startup failed: {error}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, rclpy.executors.ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
