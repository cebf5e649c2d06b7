"""sensor_msgs <-> numpy, vectorised: `np.frombuffer` views, no per-point Python loops.

Errors raise `ConversionError` with a message that says what is wrong with the message.
"""
import array
from typing import Optional, Tuple

import numpy as np
from sensor_msgs.msg import Image, PointCloud2, PointField

# encoding -> (channels, dtype, how to reach RGB)
IMAGE_ENCODINGS = {
    'rgb8': (3, np.uint8, 'rgb'), 'bgr8': (3, np.uint8, 'bgr'),
    'rgba8': (4, np.uint8, 'rgb'), 'bgra8': (4, np.uint8, 'bgr'),
    'mono8': (1, np.uint8, 'mono'),
}
_FIELD_DTYPES = {PointField.INT8: 'i1', PointField.UINT8: 'u1', PointField.INT16: 'i2',
                 PointField.UINT16: 'u2', PointField.INT32: 'i4', PointField.UINT32: 'u4',
                 PointField.FLOAT32: 'f4', PointField.FLOAT64: 'f8'}


class ConversionError(ValueError):
    """A message that cannot be converted, with the reason."""


def _byte_array(values: np.ndarray) -> array.array:
    """One copy of a C-contiguous array into the array('B') that message data fields hold
    (assigning bytes would copy twice)."""
    data = array.array('B')
    data.frombytes(memoryview(np.ascontiguousarray(values)).cast('B'))
    return data


def _buffer(data) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def stamp_ns(header) -> int:
    """A message header's stamp in integer nanoseconds (what frames are matched by)."""
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def _rows(msg: Image, row_bytes: int) -> np.ndarray:
    """(height, row_bytes) uint8 view of an image's pixel rows, honouring `step` padding."""
    height, width, step = msg.height, msg.width, msg.step
    if height == 0 or width == 0:
        raise ConversionError(f'empty image ({width}x{height})')
    if step < row_bytes:
        raise ConversionError(f'image step {step} is smaller than width * pixel size '
                              f'{row_bytes}')
    data = _buffer(msg.data)
    if data.size < height * step:
        raise ConversionError(f'image data has {data.size} bytes, height * step needs '
                              f'{height * step}')
    return data[:height * step].reshape(height, step)[:, :row_bytes]


def image_to_float(msg: Image) -> np.ndarray:
    """sensor_msgs/Image 32FC1 (an anomaly map) -> (H, W) float32, honouring `step` and the
    byte order."""
    if msg.encoding != '32FC1':
        raise ConversionError(f'expected a 32FC1 image, got {msg.encoding!r}')
    rows = _rows(msg, msg.width * 4)
    return rows.copy().view('>f4' if msg.is_bigendian else '<f4').astype(np.float32)


def image_to_rgb(msg: Image) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> (H, W, 3) uint8 RGB.

    Honours `step` (row padding). 8-bit encodings have no byte order, so `is_bigendian` is
    irrelevant for them.
    """
    if msg.encoding not in IMAGE_ENCODINGS:
        raise ConversionError(f'unsupported image encoding {msg.encoding!r}; supported: '
                              f'{sorted(IMAGE_ENCODINGS)}')
    channels, dtype, order = IMAGE_ENCODINGS[msg.encoding]
    row_bytes = msg.width * channels * np.dtype(dtype).itemsize
    pixels = _rows(msg, row_bytes).reshape(msg.height, msg.width, channels)
    if order == 'mono':
        return np.repeat(pixels, 3, axis=2)
    rgb = pixels[..., :3]
    return np.ascontiguousarray(rgb[..., ::-1] if order == 'bgr' else rgb)


def image_from_array(array_: np.ndarray, encoding: str, header=None) -> Image:
    """(H, W, 3) uint8 for rgb8/bgr8, (H, W) uint8 for mono8, (H, W) float32 for 32FC1."""
    expected = {'rgb8': (3, np.uint8), 'bgr8': (3, np.uint8), 'mono8': (1, np.uint8),
                '32FC1': (1, np.float32)}
    if encoding not in expected:
        raise ConversionError(f'cannot write encoding {encoding!r}')
    channels, dtype = expected[encoding]
    values = np.ascontiguousarray(array_, dtype=dtype)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = values.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = int(values.dtype.byteorder == '>')
    msg.step = msg.width * channels * values.itemsize
    msg.data = _byte_array(values)
    return msg


def cloud_field_dtype(msg: PointCloud2, names=('x', 'y', 'z')) -> np.dtype:
    """Structured dtype that reads the named float32 fields at their offsets."""
    fields = {f.name: f for f in msg.fields}
    missing = [n for n in names if n not in fields]
    if missing:
        raise ConversionError(f'point cloud has no field(s) {missing} (fields: '
                              f'{sorted(fields)})')
    bad = [n for n in names if fields[n].datatype != PointField.FLOAT32]
    if bad:
        raise ConversionError(f'point cloud field(s) {bad} are not float32')
    end = max(fields[n].offset + 4 for n in names)
    if msg.point_step < end:
        raise ConversionError(f'point_step {msg.point_step} is smaller than the fields need '
                              f'({end} bytes)')
    byte_order = '>' if msg.is_bigendian else '<'
    return np.dtype({'names': list(names), 'formats': [byte_order + 'f4'] * len(names),
                     'offsets': [fields[n].offset for n in names],
                     'itemsize': msg.point_step})


def cloud_to_xyz(msg: PointCloud2) -> np.ndarray:
    """sensor_msgs/PointCloud2 -> (height, width, 3) float32 (unorganized clouds: (1, N, 3)).

    float32 x, y, z at any offsets and point_step, rows padded to row_step; other fields are
    ignored. NaN/Inf points are kept (the Detector treats them as invalid).
    """
    dtype = cloud_field_dtype(msg)
    height, width = msg.height, msg.width
    if height == 0 or width == 0:
        raise ConversionError('empty point cloud')
    if msg.row_step < width * msg.point_step:
        raise ConversionError(f'row_step {msg.row_step} is smaller than width * point_step '
                              f'{width * msg.point_step}')
    data = _buffer(msg.data)
    needed = (height - 1) * msg.row_step + width * msg.point_step
    if data.size < needed:
        raise ConversionError(f'point cloud data has {data.size} bytes, {height} rows of '
                              f'row_step {msg.row_step} need {needed}')
    points = np.ndarray(shape=(height, width), dtype=dtype, buffer=data,
                        strides=(msg.row_step, msg.point_step))
    xyz = np.empty((height, width, 3), dtype=np.float32)
    for i, name in enumerate(('x', 'y', 'z')):  # three field copies, vectorised
        xyz[..., i] = points[name]
    return xyz


def cloud_from_arrays(xyz: np.ndarray, rgb: Optional[np.ndarray] = None,
                      anomaly: Optional[np.ndarray] = None, header=None,
                      dense: bool = False) -> PointCloud2:
    """(H, W, 3) or (N, 3) float32 points (+ rgb uint8, + anomaly float32) -> PointCloud2.

    Organized (H, W) input keeps its shape. Fields: x, y, z, [rgb], [anomaly], all float32.
    """
    organized = xyz.ndim == 3
    height, width = (xyz.shape[0], xyz.shape[1]) if organized else (1, xyz.shape[0])
    names = ['x', 'y', 'z'] + ['rgb'] * (rgb is not None) + ['anomaly'] * (anomaly is not None)
    # Every field is float32: the point records are one (H, W, fields) float32 buffer, filled
    # in place (rgb as the bytes B, G, R, 0 of a little-endian 0x00RRGGBB).
    points = np.empty((height, width, len(names)), dtype='<f4')
    points[..., :3] = xyz.reshape(height, width, 3)
    if rgb is not None:
        raw = points.view(np.uint8).reshape(height, width, 4 * len(names))
        raw[..., 12:15] = rgb.reshape(height, width, 3)[..., ::-1]
        raw[..., 15] = 0
    if anomaly is not None:
        points[..., len(names) - 1] = anomaly.reshape(height, width)
    msg = PointCloud2()
    if header is not None:
        msg.header = header
    msg.height, msg.width = height, width
    msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                  for i, n in enumerate(names)]
    msg.is_bigendian = False
    msg.point_step = 4 * len(names)
    msg.row_step = msg.point_step * width
    msg.is_dense = dense
    msg.data = _byte_array(points)
    return msg


def intrinsics_from_camera_info(msg) -> Optional[np.ndarray]:
    """(3, 3) K from sensor_msgs/CameraInfo, None when it is all zeros (uncalibrated)."""
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    return None if k[0, 0] <= 0 or k[1, 1] <= 0 else k


def organize_cloud(points: np.ndarray, intrinsics: np.ndarray, shape: Tuple[int, int]
                   ) -> np.ndarray:
    """Unorganized (N, 3) points in the camera optical frame -> (H, W, 3) organized map by
    pinhole projection; the nearest point wins where several land on one pixel."""
    height, width = shape
    points = points.reshape(-1, 3)
    finite = np.isfinite(points).all(1) & (points[:, 2] > 0)
    p = points[finite]
    u = np.round(intrinsics[0, 0] * p[:, 0] / p[:, 2] + intrinsics[0, 2]).astype(np.int64)
    v = np.round(intrinsics[1, 1] * p[:, 1] / p[:, 2] + intrinsics[1, 2]).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    p, u, v = p[inside], u[inside], v[inside]
    order = np.argsort(-p[:, 2])  # far first, so the nearest is written last
    organized = np.zeros((height, width, 3), dtype=np.float32)
    organized[v[order], u[order]] = p[order]
    return organized


def register_to_image(xyz: np.ndarray, image_shape: Tuple[int, int]) -> np.ndarray:
    """Organized cloud registered to the image at the same size or an integer multiple either
    way -> (H, W, 3) at the image size (nearest: points are repeated or subsampled)."""
    height, width = image_shape
    ch, cw = xyz.shape[:2]
    if (ch, cw) == (height, width):
        return xyz
    if ch % height == 0 and cw % width == 0 and ch // height == cw // width:
        factor = ch // height
        return np.ascontiguousarray(xyz[::factor, ::factor])
    if height % ch == 0 and width % cw == 0 and height // ch == width // cw:
        factor = height // ch
        return np.repeat(np.repeat(xyz, factor, axis=0), factor, axis=1)
    raise ConversionError(f'cloud {cw}x{ch} is not registered to image {width}x{height} '
                          '(same size or an integer multiple either way)')


def frame_to_arrays(image: Image, cloud: PointCloud2, intrinsics: Optional[np.ndarray]
                    ) -> Tuple[np.ndarray, np.ndarray]:
    """A synchronised image and cloud -> (rgb (H, W, 3) uint8, xyz (H, W, 3) float32 registered
    to the image): organized clouds map directly (same size or an integer multiple either
    way), unorganized ones are projected with the 3x3 camera intrinsics (ConversionError
    without). The node and `dbmr-bag to-dataset` both use it."""
    rgb = image_to_rgb(image)
    xyz = cloud_to_xyz(cloud)
    if cloud.height > 1:
        return rgb, register_to_image(xyz, rgb.shape[:2])
    if intrinsics is None:
        raise ConversionError('unorganized cloud without camera intrinsics (no camera_info '
                              'received)')
    return rgb, organize_cloud(xyz, intrinsics, rgb.shape[:2])
