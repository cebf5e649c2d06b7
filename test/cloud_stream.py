"""A camera-like publisher in its own process (used by test_dds.py): best-effort organized
PointCloud2 frames of `height` x `width` points (x, y, z, rgb: 16 bytes each) on `topic` at
`hz`, stamped 1, 2, 3, ... ns (COUNT 0: until stdin closes, like a camera). It starts once a
subscriber matched and stays alive (so its shared-memory segment does too) until its stdin
closes.

    python cloud_stream.py TOPIC COUNT HZ HEIGHT WIDTH
"""
import sys
import threading
import time

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from dbmr_ros.ros.conversions import cloud_from_arrays


def main(topic: str, count: int, hz: float, height: int, width: int) -> int:
    rclpy.init()
    node = rclpy.create_node('cloud_stream')
    publisher = node.create_publisher(PointCloud2, topic, qos_profile_sensor_data)
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    xyz = np.stack([u * 1e-3, v * 1e-3, np.full_like(u, 0.5)], axis=-1)
    colours = np.zeros((height, width, 3), np.uint8)
    message = cloud_from_arrays(xyz, colours, header=Header(frame_id='camera'))
    deadline = time.monotonic() + 120
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(f'subscribers {publisher.get_subscription_count()}, {len(message.data)} bytes per '
          'frame', flush=True)
    reader_done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), reader_done.set()), daemon=True).start()
    start, i = time.perf_counter(), 0
    while (i < count or count == 0) and not reader_done.is_set():
        while time.perf_counter() < start + i / hz:  # the camera's frame clock
            time.sleep(0.0005)
        message.header.stamp.nanosec = i + 1
        publisher.publish(message)
        i += 1
    print(f'published {i}', flush=True)
    reader_done.wait()
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]),
                  int(sys.argv[5])))
