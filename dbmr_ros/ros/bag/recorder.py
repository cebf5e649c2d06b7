"""Recording topics to a bag, raw, as received."""
import threading
import time
from typing import List

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from dbmr_ros.ros.bag.storage import bag_qos, message_class, open_writer, TYPESTORE


class Recorder:
    """Subscribes (raw) to topics once they are discovered and writes what arrives, stamped with
    the receive time on the node's clock (the bag's clock under use_sim_time)."""

    def __init__(self, node: Node, path, topics: List[str], storage: str = 'mcap',
                 max_messages: int = 0):
        """max_messages > 0: at most that many messages per topic are written."""
        self.node, self.topics, self.max_messages = node, list(topics), max_messages
        self.writer = open_writer(path, storage)
        self.lock = threading.Lock()
        self.connections = {}
        self.counts = {t: 0 for t in self.topics}
        self.closed = False

    def discover(self, timeout: float = 30.0) -> List[str]:
        """Subscribe to every topic whose type and publishers are known; returns those still
        missing. A topic with a best-effort publisher (camera drivers' sensor-data QoS) is
        recorded best effort: a reliable subscription would never match it."""
        deadline = time.monotonic() + timeout
        while True:
            types = dict(self.node.get_topic_names_and_types())
            for topic in self.topics:
                if topic in self.connections or topic not in types:
                    continue
                publishers = self.node.get_publishers_info_by_topic(topic)
                if not publishers:
                    continue
                reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE
                               for p in publishers)
                msgtype = types[topic][0]
                cls = message_class(msgtype)
                with self.lock:
                    self.connections[topic] = self.writer.add_connection(
                        topic, msgtype, typestore=TYPESTORE,
                        offered_qos_profiles=[bag_qos(reliable)])
                self.node.create_subscription(
                    cls, topic, lambda raw, t=topic: self._on(t, raw),
                    QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliable
                               else ReliabilityPolicy.BEST_EFFORT), raw=True)
            missing = [t for t in self.topics if t not in self.connections]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)

    def _on(self, topic: str, raw: bytes):
        with self.lock:
            if self.closed or 0 < self.max_messages <= self.counts[topic]:
                return
            self.writer.write(self.connections[topic], self.node.get_clock().now().nanoseconds,
                              raw)
            self.counts[topic] += 1

    def is_full(self) -> bool:
        """True once every topic has max_messages messages written (never without a limit)."""
        with self.lock:
            return self.max_messages > 0 and all(count >= self.max_messages
                                                 for count in self.counts.values())

    def close(self):
        with self.lock:
            if not self.closed:
                self.closed = True
                self.writer.close()
