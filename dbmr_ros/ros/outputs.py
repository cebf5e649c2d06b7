"""The node's visual outputs as pure functions of one frame's arrays and result, so that the
node and benchmarks/bench_node.py build exactly the same messages."""
from typing import Optional

import numpy as np
from scipy.ndimage import find_objects, label
from sensor_msgs.msg import Image, PointCloud2
from visualization_msgs.msg import Marker, MarkerArray

from dbmr_ros.ros.conversions import cloud_from_arrays, image_from_array
from dbmr_ros.visualize import blend, colorize, display_range

MAX_REGION_MARKERS = 20


def anomaly_colours(anomaly_map: np.ndarray, threshold: Optional[float]) -> np.ndarray:
    """(H, W) float32 map -> (H, W, 3) uint8 RGB colours; the threshold sits at mid-scale."""
    return colorize(anomaly_map, display_range(threshold, anomaly_map))


def heatmap_message(rgb: np.ndarray, colours: np.ndarray, alpha: float, header) -> Image:
    """The colours blended over the (H, W, 3) uint8 RGB image, as bgr8 (what rviz shows)."""
    return image_from_array(blend(rgb, colours, alpha)[..., ::-1], 'bgr8', header)


def cloud_message(xyz: np.ndarray, valid: np.ndarray, colours: np.ndarray,
                  anomaly_map: np.ndarray, header) -> PointCloud2:
    """The input points (invalid ones NaN), coloured by anomaly, with an `anomaly` field."""
    points = np.where(valid[..., None], xyz, np.float32(np.nan))
    return cloud_from_arrays(points, colours, anomaly_map, header)


def markers_message(header, xyz: np.ndarray, valid: np.ndarray, score: float,
                    is_anomalous: bool, anomaly_map: np.ndarray,
                    threshold: Optional[float]) -> MarkerArray:
    """Score text above the object and a box around every region above the threshold (at most
    MAX_REGION_MARKERS). valid: (H, W) bool, the pixels of xyz with a point (some)."""
    array_ = MarkerArray()
    array_.markers.append(Marker(header=header, ns='dbmr', id=0, action=Marker.DELETEALL))
    text = Marker(header=header, ns='dbmr_score', id=1, type=Marker.TEXT_VIEW_FACING,
                  action=Marker.ADD, text=f'{"ANOMALY " if is_anomalous else ""}{score:.3f}')
    # The label's place needs no precision: every 4th row and column (16x fewer points).
    object_points = xyz[::4, ::4][valid[::4, ::4]]
    if not len(object_points):
        object_points = xyz[valid]
    centre = object_points.mean(axis=0)
    text.pose.position.x, text.pose.position.y = float(centre[0]), float(centre[1])
    text.pose.position.z = float(object_points[:, 2].min() - 0.02)
    text.pose.orientation.w = 1.0
    text.scale.z = 0.02
    text.color.r, text.color.g, text.color.b, text.color.a = (
        (1.0, 0.2, 0.2, 1.0) if is_anomalous else (0.2, 1.0, 0.2, 1.0))
    array_.markers.append(text)
    if threshold is None:
        return array_
    regions, _ = label(anomaly_map > threshold)
    for i, window in enumerate(find_objects(regions)[:MAX_REGION_MARKERS]):
        inside = (regions[window] == i + 1) & valid[window]
        if inside.sum() < 4:
            continue
        points = xyz[window][inside]
        lo, hi = points.min(axis=0), points.max(axis=0)
        box = Marker(header=header, ns='dbmr_regions', id=10 + i, type=Marker.CUBE,
                     action=Marker.ADD)
        box.pose.position.x, box.pose.position.y, box.pose.position.z = (
            float(v) for v in (lo + hi) / 2)
        box.pose.orientation.w = 1.0
        box.scale.x, box.scale.y, box.scale.z = (float(max(v, 0.002)) for v in hi - lo)
        box.color.r, box.color.a = 1.0, 0.4
        array_.markers.append(box)
    return array_
