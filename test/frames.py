"""Real sensor frames as arrays, for tests with and without ROS."""
from pathlib import Path

import cv2
import numpy as np


def tum_frame(directory: Path):
    """The TUM RGB-D frame as (rgb (480, 640, 3) uint8, organized xyz float32), fx=fy=525."""
    rgb = cv2.cvtColor(cv2.imread(str(directory / 'TUM_color.png')), cv2.COLOR_BGR2RGB)
    depth = cv2.imread(str(directory / 'TUM_depth.png'), cv2.IMREAD_UNCHANGED).astype(
        np.float32) / 5000.0
    v, u = np.mgrid[0:depth.shape[0], 0:depth.shape[1]].astype(np.float32)
    xyz = np.stack([(u - 319.5) * depth / 525.0, (v - 239.5) * depth / 525.0, depth], axis=-1)
    return rgb, xyz.astype(np.float32)
