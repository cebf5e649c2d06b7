"""Colour maps and overlays shared by the node, the CLIs and the reports (numpy + OpenCV)."""
from typing import Optional

import cv2
import numpy as np

from dbmr_ros.data.sample import valid_mask


def display_range(threshold: Optional[float], anomaly_map: np.ndarray) -> float:
    """Upper end of the colour scale: twice the threshold (so the threshold sits mid-scale and
    frames are comparable), or the map's own maximum when there is no threshold."""
    if threshold is not None and threshold > 0:
        return 2.0 * threshold
    top = float(np.max(anomaly_map)) if anomaly_map.size else 0.0
    return top if top > 0 else 1.0


def colorize(anomaly_map: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) float -> (H, W, 3) uint8 RGB, jet colour map over [0, vmax]."""
    scaled = np.clip(np.nan_to_num(anomaly_map) / vmax * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(scaled, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def overlay(rgb: np.ndarray, anomaly_map: np.ndarray, vmax: float, alpha: float = 0.5
            ) -> np.ndarray:
    """Colour-mapped anomaly map blended over the RGB image (both (H, W))."""
    return blend(rgb, colorize(anomaly_map, vmax), alpha)


def blend(rgb: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(H, W, 3) uint8 colours over (H, W, 3) uint8 rgb with opacity alpha."""
    return cv2.addWeighted(np.ascontiguousarray(rgb), 1.0 - alpha, colours, alpha, 0.0)


def depth_image(xyz: np.ndarray) -> np.ndarray:
    """Organized cloud -> (H, W, 3) uint8 grey depth rendering (near is bright, invalid black)."""
    valid = valid_mask(xyz)
    out = np.zeros(xyz.shape[:2], dtype=np.uint8)
    if valid.any():
        z = xyz[..., 2][valid]
        lo, hi = np.percentile(z, 1), np.percentile(z, 99)
        out[valid] = np.clip(255 - (z - lo) / max(hi - lo, 1e-9) * 205, 50, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=2)


def report_panel(rgb, xyz, gt, anomaly_map, vmax, title: str = '') -> np.ndarray:
    """input RGB | depth | ground truth | anomaly map overlay, side by side (RGB uint8)."""
    gt_image = np.zeros_like(rgb) if gt is None else np.repeat(
        (np.asarray(gt) > 0).astype(np.uint8)[..., None] * 255, 3, axis=2)
    panel = np.concatenate([rgb, depth_image(xyz), gt_image, overlay(rgb, anomaly_map, vmax)],
                           axis=1)
    if title:
        cv2.putText(panel, title, (5, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return panel
