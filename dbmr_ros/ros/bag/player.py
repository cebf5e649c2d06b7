"""Publishing a bag over ROS 2 with its recorded timing and QoS (+ /clock)."""
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Optional

from rclpy.duration import Duration
from rclpy.node import Node
from rosgraph_msgs.msg import Clock

from dbmr_ros.ros.bag.storage import BagError, message_class, rclpy_qos, read_messages


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
                    rclpy_qos(connection, reliable))
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
                    if clock:  # never past the message: /clock must not step back below
                        self._publish_clock(min(bag_now(), log_time))
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

    def wait_for_subscribers(self, count: int, timeout: float,
                             clock: bool = False) -> Dict[str, int]:
        """Block until every played topic has `count` matched subscriptions (so nothing is
        published before a recorder or node listens) and, with `clock`, /clock has one (the
        sim-time node: its first clock messages must not be lost either); returns the topics
        still short."""
        deadline = time.monotonic() + timeout
        wanted = [(topic, publisher, count) for topic, publisher in self.publishers.items()
                  if publisher is not None]
        if clock and count > 0:
            wanted.append(('/clock', self.clock, 1))
        while True:
            short = {topic: publisher.get_subscription_count()
                     for topic, publisher, needed in wanted
                     if publisher.get_subscription_count() < needed}
            if short and time.monotonic() > deadline:
                return short
            if not short:
                break
            time.sleep(0.05)
        if clock and count > 0:
            # The writer can see a reader before the reader sees the writer: samples sent in
            # between are lost once the history (10) moves on. The bag's start time, delivered
            # and acknowledged before anything plays, is where every clock subscriber starts.
            self._publish_clock(self.messages[0][0])
            remaining = Duration(seconds=max(deadline - time.monotonic(), 1.0))
            if not self.clock.wait_for_all_acked(remaining):
                return {'/clock': 'start time not acknowledged'}
        return {}

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until reliable subscribers acknowledged everything, so a process that exits
        right after playing does not lose its last messages."""
        for publisher in [p for p in self.publishers.values() if p is not None] + [self.clock]:
            publisher.wait_for_all_acked(Duration(seconds=timeout))
