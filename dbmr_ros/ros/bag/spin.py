"""Spinning a node in a background thread (the player and recorder wait on the main one)."""
import threading

import rclpy
from rclpy.node import Node


class BackgroundSpin:
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
