"""A labelled dataset split -> a bag of sensor messages, as a camera would publish them."""
from pathlib import Path

import numpy as np
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, Image

from dbmr_ros.data.datasets import open_dataset
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.ros.bag.storage import bag_qos, open_writer, START_STAMP_NS, TOPICS, TYPESTORE
from dbmr_ros.ros.conversions import cloud_from_arrays, image_from_array


def from_dataset(args) -> Path:
    refs = open_dataset(args.dataset, args.data_root, args.category, args.split)
    writer = open_writer(args.output, args.storage)
    period_ns = int(1e9 / args.rate)
    try:
        sensor_qos, reliable_qos = [bag_qos(False, 5)], [bag_qos(True)]
        connections = {
            'image': writer.add_connection(TOPICS['image'], 'sensor_msgs/msg/Image',
                                           typestore=TYPESTORE,
                                           offered_qos_profiles=sensor_qos),
            'points': writer.add_connection(TOPICS['points'], 'sensor_msgs/msg/PointCloud2',
                                            typestore=TYPESTORE,
                                            offered_qos_profiles=sensor_qos)}
        for i, ref in enumerate(refs):
            sample = ref.load()
            stamp = START_STAMP_NS + i * period_ns
            header = Image().header
            header.stamp.sec, header.stamp.nanosec = divmod(stamp, 10**9)
            header.frame_id = args.frame_id
            # As a sensor publishes them: raw, invalid points NaN, not preprocessed.
            points = np.where(valid_mask(sample.xyz)[..., None], sample.xyz, np.nan)
            messages = [('image', image_from_array(sample.rgb, 'rgb8', header)),
                        ('points', cloud_from_arrays(points.astype(np.float32),
                                                     header=header))]
            if sample.intrinsics is not None:
                if 'camera_info' not in connections:
                    connections['camera_info'] = writer.add_connection(
                        TOPICS['camera_info'], 'sensor_msgs/msg/CameraInfo',
                        typestore=TYPESTORE, offered_qos_profiles=reliable_qos)
                info = CameraInfo(header=header, height=sample.rgb.shape[0],
                                  width=sample.rgb.shape[1], distortion_model='plumb_bob',
                                  d=[0.0] * 5, k=sample.intrinsics.flatten().tolist())
                info.p = np.c_[sample.intrinsics, np.zeros(3)].flatten().tolist()
                info.r = np.eye(3).flatten().tolist()
                messages.append(('camera_info', info))
            if sample.gt is not None:
                if 'gt' not in connections:
                    connections['gt'] = writer.add_connection(
                        TOPICS['gt'], 'sensor_msgs/msg/Image', typestore=TYPESTORE,
                        offered_qos_profiles=reliable_qos)
                messages.append(('gt', image_from_array(sample.gt.astype(np.uint8) * 255,
                                                        'mono8', header)))
            for key, msg in messages:
                writer.write(connections[key], stamp, serialize_message(msg))
    finally:
        writer.close()
    print(f'wrote {len(refs)} frames of {args.dataset}/{args.category}/{args.split} to '
          f'{args.output} ({args.storage})')
    return Path(args.output)
