"""sensor_msgs <-> numpy conversions (no DDS needed)."""
import array

import numpy as np
import pytest
from sensor_msgs.msg import Image, PointCloud2, PointField

from dbmr_ros.result import AnomalyResult
from dbmr_ros.report import overlay_indices
from dbmr_ros.ros import result_message
from dbmr_ros.ros.conversions import (cloud_from_arrays, cloud_to_xyz, ConversionError,
                                      image_from_array, image_to_float, image_to_rgb,
                                      organize_cloud, register_to_image, stamp_ns)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    height, width = pixels.shape[:2]
    row = pixels.reshape(height, -1)
    padded = np.zeros((height, row.shape[1] + pad), dtype=np.uint8)
    padded[:, :row.shape[1]] = row
    return Image(height=height, width=width, encoding=encoding, step=padded.shape[1],
                 data=array.array('B', padded.tobytes()))


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_image_encodings_with_step_padding(encoding):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)
    if encoding == 'mono8':
        pixels, expected = rgb[..., 0], np.repeat(rgb[..., :1], 3, axis=2)
    else:
        pixels = rgb[..., ::-1] if encoding.startswith('bgr') else rgb
        if encoding.endswith('a8'):
            pixels = np.concatenate([pixels, np.full((5, 7, 1), 9, np.uint8)], axis=2)
        expected = rgb
    out = image_to_rgb(_image(np.ascontiguousarray(pixels), encoding, pad=3))
    np.testing.assert_array_equal(out, expected)


def test_image_errors():
    good = _image(np.zeros((4, 4, 3), np.uint8), 'rgb8')
    bad = Image(height=4, width=4, encoding='yuv422', step=8, data=good.data)
    with pytest.raises(ConversionError, match='unsupported image encoding'):
        image_to_rgb(bad)
    short = Image(height=4, width=4, encoding='rgb8', step=12,
                  data=array.array('B', bytes(40)))
    with pytest.raises(ConversionError, match='height \\* step'):
        image_to_rgb(short)
    with pytest.raises(ConversionError, match='step'):
        image_to_rgb(Image(height=4, width=4, encoding='rgb8', step=5, data=good.data))


def test_image_from_array_round_trip():
    values = np.random.default_rng(1).random((6, 9)).astype(np.float32)
    msg = image_from_array(values, '32FC1')
    assert msg.step == 36 and msg.encoding == '32FC1' and not msg.is_bigendian
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.float32).reshape(6, 9), values)
    rgb = np.random.default_rng(2).integers(0, 255, (6, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(image_from_array(rgb, 'rgb8')), rgb)


def _cloud(xyz, offsets=(8, 0, 16), point_step=24, row_pad=4, big_endian=False,
           extra=True, datatype=PointField.FLOAT32):
    height, width = xyz.shape[:2]
    row_step = width * point_step + row_pad
    data = np.zeros((height, row_step), dtype=np.uint8)
    order = '>' if big_endian else '<'
    for i, offset in enumerate(offsets):
        for r in range(height):
            view = data[r, :width * point_step].reshape(width, point_step)
            view[:, offset:offset + 4] = np.frombuffer(
                xyz[r, :, i].astype(order + 'f4').tobytes(), np.uint8).reshape(width, 4)
    fields = [PointField(name=n, offset=o, datatype=datatype, count=1)
              for n, o in zip('xyz', offsets)]
    if extra:
        fields.append(PointField(name='intensity', offset=4, datatype=PointField.FLOAT32,
                                 count=1))
    return PointCloud2(height=height, width=width, fields=fields, is_bigendian=big_endian,
                       point_step=point_step, row_step=row_step,
                       data=array.array('B', data.tobytes()), is_dense=False)


@pytest.mark.parametrize('big_endian', [False, True])
def test_cloud_any_offsets_point_step_and_row_padding(big_endian):
    xyz = np.random.default_rng(0).random((3, 5, 3)).astype(np.float32)
    xyz[1, 2] = np.nan
    out = cloud_to_xyz(_cloud(xyz, big_endian=big_endian))
    np.testing.assert_array_equal(out, xyz)


def test_cloud_errors():
    xyz = np.zeros((2, 2, 3), np.float32)
    no_z = _cloud(xyz)
    no_z.fields = [f for f in no_z.fields if f.name != 'z']
    with pytest.raises(ConversionError, match="no field"):
        cloud_to_xyz(no_z)
    with pytest.raises(ConversionError, match='not float32'):
        cloud_to_xyz(_cloud(xyz, datatype=PointField.FLOAT64))
    short = _cloud(xyz)
    short.data = array.array('B', bytes(10))
    with pytest.raises(ConversionError, match='bytes'):
        cloud_to_xyz(short)
    inconsistent = _cloud(xyz)
    inconsistent.row_step = 8
    with pytest.raises(ConversionError, match='row_step'):
        cloud_to_xyz(inconsistent)
    small_step = _cloud(xyz)
    small_step.point_step = 12
    with pytest.raises(ConversionError, match='point_step'):
        cloud_to_xyz(small_step)
    with pytest.raises(ConversionError, match='empty'):
        cloud_to_xyz(PointCloud2(height=0, width=0, fields=_cloud(xyz).fields, point_step=24))


def test_cloud_from_arrays_round_trip_and_packed_rgb():
    rng = np.random.default_rng(3)
    xyz = rng.random((4, 6, 3)).astype(np.float32)
    rgb = rng.integers(0, 255, (4, 6, 3), dtype=np.uint8)
    anomaly = rng.random((4, 6)).astype(np.float32)
    msg = cloud_from_arrays(xyz, rgb, anomaly)
    assert [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb', 'anomaly']
    assert (msg.height, msg.width, msg.point_step) == (4, 6, 20)
    np.testing.assert_array_equal(cloud_to_xyz(msg), xyz)
    raw = np.frombuffer(msg.data, np.float32).reshape(4, 6, 5)
    packed = raw[..., 3].view(np.uint32)
    assert packed[0, 0] == (int(rgb[0, 0, 0]) << 16 | int(rgb[0, 0, 1]) << 8 | int(rgb[0, 0, 2]))
    np.testing.assert_array_equal(raw[..., 4], anomaly)


def test_organize_cloud_projects_with_intrinsics():
    k = np.array([[100.0, 0, 10], [0, 100.0, 8], [0, 0, 1]])
    points = np.array([[0.0, 0.0, 1.0], [0.05, 0.02, 1.0], [0.0, 0.0, 0.5], [np.nan, 0, 1],
                       [5.0, 0.0, 1.0]], np.float32)
    organized = organize_cloud(points, k, (16, 20))
    assert organized.shape == (16, 20, 3)
    np.testing.assert_array_equal(organized[8, 10], [0.0, 0.0, 0.5])  # the nearest wins
    np.testing.assert_array_equal(organized[10, 15], points[1])
    assert (organized != 0).any(2).sum() == 2  # NaN and out-of-image points are dropped


def test_register_to_image_multiples():
    xyz = np.arange(8 * 8 * 3, dtype=np.float32).reshape(8, 8, 3)
    assert register_to_image(xyz, (4, 4)).shape == (4, 4, 3)
    np.testing.assert_array_equal(register_to_image(xyz, (4, 4))[1, 1], xyz[2, 2])
    assert register_to_image(xyz, (16, 16)).shape == (16, 16, 3)
    with pytest.raises(ConversionError, match='not registered'):
        register_to_image(xyz, (6, 6))


@pytest.mark.parametrize('big_endian', [False, True])
def test_float_map_honours_step_and_byte_order(big_endian):
    """A recorded 32FC1 anomaly map with row padding (as another publisher may send it)."""
    amap = np.random.default_rng(1).random((4, 6)).astype(np.float32)
    rows = amap.astype('>f4' if big_endian else '<f4').view(np.uint8).reshape(4, -1)
    msg = _image(rows, '32FC1', pad=8)
    msg.width, msg.is_bigendian = 6, big_endian
    np.testing.assert_array_equal(image_to_float(msg), amap)
    np.testing.assert_array_equal(image_to_float(image_from_array(amap, '32FC1')), amap)
    with pytest.raises(ConversionError, match="expected a 32FC1 image, got 'rgb8'"):
        image_to_float(_image(np.zeros((2, 2, 3), np.uint8), 'rgb8'))


def test_result_message_round_trip():
    """~/result is written and read by one module: the score reads back bit-exact."""
    from std_msgs.msg import Header
    header = Header(frame_id='camera')
    header.stamp.sec, header.stamp.nanosec = 1_700_000_000, 123
    blank = np.zeros((2, 2), np.float32)
    result = AnomalyResult(score=0.1 + 0.2, anomaly_map=blank, is_anomalous=True,
                           map_2d=blank, map_3d=blank, paper_map=blank, paper_score=0.0,
                           scoring='paper', timings_ms={'network': 12.345})
    msg = result_message.encode('dbmr_detector', header, result, 0.25, 40.0)
    decoded = result_message.decode(msg)
    assert decoded.stamp_ns == stamp_ns(header) == 1_700_000_000_000_000_123
    assert decoded.score == 0.1 + 0.2 and decoded.is_anomalous and decoded.scoring == 'paper'
    assert decoded.threshold == 0.25
    assert decoded.timings_ms == {'processing': 40.0, 'network': 12.35}
    assert result_message.decode(result_message.encode('n', header, result, None, 1.0)
                                 ).threshold is None
    assert result_message.decode(type(msg)()) is None


def test_overlay_indices_evenly_spaced():
    assert overlay_indices(20, 8) == [0, 2, 4, 6, 8, 10, 12, 14]
    assert overlay_indices(3, 8) == [0, 1, 2]
    assert overlay_indices(5, 0) == []
