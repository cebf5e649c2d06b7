"""dbmr-bag to-dataset: a recording becomes a dataset every tool reads (issue #14)."""
import numpy as np
import pytest
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo

from dbmr_ros.data import open_dataset
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.ros.bag import main as bag_main
from dbmr_ros.ros.bag.storage import open_writer, TYPESTORE
from dbmr_ros.ros.conversions import cloud_from_arrays, image_from_array
from frames import tum_frame
from ros_helpers import header


def _from_dataset(root, bag, storage, dataset='synthetic', category='puck', split='test'):
    assert bag_main(['from-dataset', '--dataset', dataset, '--data-root', str(root),
                     '--category', category, '--split', split, '--output', str(bag),
                     '--storage', storage]) == 0


def _same_samples(original, converted):
    """Sample by sample, in order within good and within defective ones: equal arrays."""
    assert [r.label for r in converted] == [r.label for r in original]
    for ref, back in zip(original, converted):
        a, b = ref.load(), back.load()
        np.testing.assert_array_equal(b.rgb, a.rgb)
        np.testing.assert_array_equal(b.xyz, a.xyz)
        np.testing.assert_array_equal(b.gt, a.gt)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_round_trip_synthetic_bit_for_bit(synthetic_root, tmp_path, storage):
    _from_dataset(synthetic_root, tmp_path / 'bag', storage)
    assert bag_main(['to-dataset', str(tmp_path / 'bag'), '--output', str(tmp_path / 'data'),
                     '--category', 'line']) == 0
    _same_samples(open_dataset('synthetic', synthetic_root, 'puck', 'test'),
                  open_dataset('mvtec3d', tmp_path / 'data', 'line', 'test'))
    # The bag's camera_info became the category's pinhole calibration.
    original = open_dataset('synthetic', synthetic_root, 'puck', 'test')[0].load()
    back = open_dataset('mvtec3d', tmp_path / 'data', 'line', 'test')[0].load()
    np.testing.assert_allclose(back.intrinsics, original.intrinsics)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_round_trip_real_mvtec_bit_for_bit(mvtec_root, tmp_path, storage):
    _from_dataset(mvtec_root, tmp_path / 'bag', storage, 'mvtec3d', 'cable_gland')
    assert bag_main(['to-dataset', str(tmp_path / 'bag'), '--output', str(tmp_path / 'data'),
                     '--category', 'cable_gland']) == 0
    _same_samples(open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test'),
                  open_dataset('mvtec3d', tmp_path / 'data', 'cable_gland', 'test'))


def test_recording_of_good_parts_becomes_train_and_validation(synthetic_root, tmp_path):
    _from_dataset(synthetic_root, tmp_path / 'bag', 'mcap', split='train')
    assert bag_main(['to-dataset', str(tmp_path / 'bag'), '--output', str(tmp_path / 'data'),
                     '--category', 'line', '--validation-fraction', '0.34']) == 0
    original = open_dataset('synthetic', synthetic_root, 'puck', 'train')  # 6 samples
    train = open_dataset('mvtec3d', tmp_path / 'data', 'line', 'train')
    validation = open_dataset('mvtec3d', tmp_path / 'data', 'line', 'validation')
    assert (len(train), len(validation)) == (4, 2)  # the last third of the recording
    _same_samples(original, train + validation)
    # every 2nd pair (of both recordings), another bag for validation
    _from_dataset(synthetic_root, tmp_path / 'val_bag', 'sqlite3', split='validation')
    assert bag_main(['to-dataset', str(tmp_path / 'bag'), '--output', str(tmp_path / 'data'),
                     '--category', 'line2', '--every', '2', '--validation-bag',
                     str(tmp_path / 'val_bag')]) == 0
    assert len(open_dataset('mvtec3d', tmp_path / 'data', 'line2', 'train')) == 3
    _same_samples(open_dataset('synthetic', synthetic_root, 'puck', 'validation')[::2],
                  open_dataset('mvtec3d', tmp_path / 'data', 'line2', 'validation'))


def _driver_bag(path, rgbd_frames, with_info=True, cloud_delay_ns=0, encoding='rgb8'):
    """The real 640x480 RGB-D frame as a driver publishes it: image, unorganized cloud of the
    valid points, camera_info (fx = fy = 525, the TUM camera)."""
    rgb, xyz = tum_frame(rgbd_frames)
    writer = open_writer(path, 'mcap')
    image_c = writer.add_connection('/cam/image', 'sensor_msgs/msg/Image', typestore=TYPESTORE)
    cloud_c = writer.add_connection('/cam/points', 'sensor_msgs/msg/PointCloud2',
                                    typestore=TYPESTORE)
    info_c = writer.add_connection('/cam/info', 'sensor_msgs/msg/CameraInfo',
                                   typestore=TYPESTORE)
    points = xyz[valid_mask(xyz)]
    for i in range(3):
        stamp = 1_700_000_000_000_000_000 + i * 200_000_000  # 5 Hz
        h = header(stamp, 'camera_color_optical_frame')
        if with_info:
            info = CameraInfo(header=h, height=480, width=640, distortion_model='plumb_bob',
                              d=[0.0] * 5, k=[525.0, 0, 319.5, 0, 525.0, 239.5, 0, 0, 1])
            writer.write(info_c, stamp, serialize_message(info))
        image = rgb if encoding == 'rgb8' else rgb[..., 0].astype(np.float32)
        writer.write(image_c, stamp, serialize_message(image_from_array(image, encoding, h)))
        writer.write(cloud_c, stamp + cloud_delay_ns, serialize_message(cloud_from_arrays(
            points, header=header(stamp + cloud_delay_ns, h.frame_id))))
    writer.close()
    return rgb, xyz


def test_real_frames_from_an_unorganized_cloud_and_camera_info(rgbd_frames, tmp_path):
    rgb, xyz = _driver_bag(tmp_path / 'bag', rgbd_frames)
    assert bag_main(['to-dataset', str(tmp_path / 'bag'), '--output', str(tmp_path / 'data'),
                     '--category', 'desk', '--validation-fraction', '0.34']) == 0
    sample = open_dataset('mvtec3d', tmp_path / 'data', 'desk', 'train')[0].load()
    np.testing.assert_array_equal(sample.rgb, rgb)
    valid = valid_mask(xyz)
    # Every valid point re-projects to its own depth pixel; the rest stay (0, 0, 0).
    np.testing.assert_array_equal(valid_mask(sample.xyz), valid)
    np.testing.assert_array_equal(sample.xyz[valid], xyz[valid])
    assert not sample.xyz[~valid].any()


def test_clear_errors(rgbd_frames, synthetic_root, tmp_path, capsys):
    _driver_bag(tmp_path / 'no_info', rgbd_frames, with_info=False)
    assert bag_main(['to-dataset', str(tmp_path / 'no_info'), '--output', str(tmp_path / 'd'),
                     '--category', 'x']) == 2
    assert 'unorganized cloud without camera intrinsics' in capsys.readouterr().err
    assert not list(tmp_path.glob('d/*')) and not list(tmp_path.glob('d/.*'))  # nothing left
    _driver_bag(tmp_path / 'late', rgbd_frames, cloud_delay_ns=80_000_000)
    assert bag_main(['to-dataset', str(tmp_path / 'late'), '--output', str(tmp_path / 'd'),
                     '--category', 'y']) == 2
    err = capsys.readouterr().err
    assert 'no image / cloud pair with stamps within sync_slop 0.05 s: 3 images on ' \
        '/cam/image, 3 clouds on /cam/points; the nearest image / cloud stamps are 80.0 ms ' \
        'apart' in err, err
    assert bag_main(['to-dataset', str(tmp_path / 'late'), '--output', str(tmp_path / 'd'),
                     '--category', 'y', '--sync-slop', '0.09', '--validation-fraction',
                     '0']) == 0
    assert bag_main(['to-dataset', str(tmp_path / 'late'), '--output', str(tmp_path / 'd'),
                     '--category', 'y', '--sync-slop', '0.09']) == 2
    assert 'already holds a dataset; pass --overwrite' in capsys.readouterr().err
    _driver_bag(tmp_path / 'depth_image', rgbd_frames, encoding='32FC1')
    assert bag_main(['to-dataset', str(tmp_path / 'depth_image'), '--output',
                     str(tmp_path / 'd'), '--category', 'z']) == 2
    assert "unsupported image encoding '32FC1'" in capsys.readouterr().err
    assert bag_main(['to-dataset', str(tmp_path / 'late'), '--output', str(tmp_path / 'd'),
                     '--category', 'z', '--image-topic', '/nope']) == 2
    assert 'no sensor_msgs/msg/Image topic /nope; the bag has: /cam/image' in \
        capsys.readouterr().err
