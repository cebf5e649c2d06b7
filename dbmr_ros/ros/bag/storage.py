"""Bag storage: topics, QoS translation, opening writers, reading messages and frames.

Messages are stored as the CDR bytes rclpy itself sends, so the bags open in `ros2 bag info/play`
of any ROS 2 distro (sqlite3 and MCAP, via the pure-Python `rosbags` package).
"""
import importlib
from pathlib import Path
from typing import Callable, Dict

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness,
                                QosReliability, QosTime)
from rosbags.rosbag2 import Reader, ReaderError, Writer
from rosbags.rosbag2.writer import StoragePlugin
from rosbags.typesys import get_typestore, Stores
from sensor_msgs.msg import Image, PointCloud2

from dbmr_ros.data.sample import invalid_to_zero
from dbmr_ros.files import refuse_existing_output
from dbmr_ros.ros.conversions import cloud_to_xyz, image_to_rgb, stamp_ns

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


# --- QoS ---------------------------------------------------------------------------------

def bag_qos(reliable: bool, depth: int = 10) -> Qos:
    infinite = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=QosDurability.VOLATILE, deadline=infinite, lifespan=infinite,
               liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=infinite,
               avoid_ros_namespace_conventions=False)


def rclpy_qos(connection, force_reliable: bool) -> QoSProfile:
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
    refuse_existing_output(path, flag='', holds='a bag')  # bags are never overwritten
    plugin = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}[storage]
    writer = Writer(path, version=9, storage_plugin=plugin)
    writer.open()
    return writer


# --- reading -----------------------------------------------------------------------------

def open_reader(path) -> Reader:
    """An opened rosbags Reader; BagError (with the reason) for a missing or unreadable bag."""
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, ValueError, KeyError) as error:
        raise BagError(f'cannot open bag {path}: {error}') from error
    return reader


def bag_topics(path) -> Dict[str, str]:
    """topic -> message type of every connection in a bag."""
    reader = open_reader(path)
    try:
        return {c.topic: c.msgtype for c in reader.connections}
    finally:
        reader.close()


def read_messages(path, topics=None, warn: Callable[[str], None] = print):
    """Yield (topic, msgtype, log_time_ns, rawdata) in log-time order. A damaged bag (for
    example a truncated last message) stops the iteration with a clear warning, keeping every
    message read before the damage."""
    path = Path(path)
    reader = open_reader(path)
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
        frame = frames.setdefault(stamp_ns(msg.header), {'frame_id': msg.header.frame_id})
        if key == 'rgb':
            frame['rgb'] = image_to_rgb(msg)
        elif key == 'xyz':
            frame['xyz'] = invalid_to_zero(cloud_to_xyz(msg))
        else:
            frame['gt'] = image_to_rgb(msg)[..., 0] > 0
    return frames
