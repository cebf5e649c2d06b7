"""File readers and writers for the on-disk layouts (PNG, TIFF, YAML)."""
from pathlib import Path

import cv2
import numpy as np
import tifffile

from dbmr_ros.data.sample import invalid_to_zero


def read_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image file OpenCV reads."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path}')
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path, rgb: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'cannot write {path}')


def read_gray(path, dtype=np.uint8) -> np.ndarray:
    """(H, W) single-channel image, keeping its bit depth (uint8 masks, uint16 depth)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FileNotFoundError(f'cannot read image {path}')
    if image.ndim == 3:
        image = image[..., 0]
    if image.dtype != dtype:
        raise ValueError(f'{path}: expected {np.dtype(dtype).name}, got {image.dtype}')
    return image


def write_gray(path, image: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f'cannot write {path}')


def read_xyz(path) -> np.ndarray:
    """(H, W, 3) float32 organized point cloud from an MVTec 3D-AD TIFF; NaN/Inf become 0."""
    xyz = tifffile.imread(str(path))
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f'{path}: expected an (H, W, 3) xyz TIFF, got shape {xyz.shape}')
    return invalid_to_zero(xyz)


def write_xyz(path, xyz: np.ndarray) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(path), xyz.astype(np.float32), photometric='rgb')
