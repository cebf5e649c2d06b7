"""A recording -> a dataset folder in the MVTec 3D-AD layout (`dbmr-bag to-dataset`), so that
dbmr-train, dbmr-calibrate and dbmr-eval read it like any dataset.

Image and cloud are paired by approximate time with the node's own synchroniser and
`sync_slop`, and turned into arrays by the node's own `frame_to_arrays` (organized clouds map
directly, unorganized ones are projected with camera_info). Invalid points are written as
(0, 0, 0), as MVTec 3D-AD does. A bag with a ground-truth mask topic (what `from-dataset`
writes) becomes a labelled test split; any other bag becomes train/good, its last part
validation/good.
"""
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from dbmr_ros.data.io import write_gray, write_rgb, write_xyz
from dbmr_ros.data.sample import invalid_to_zero
from dbmr_ros.files import refuse_existing_output
from dbmr_ros.ros.bag.storage import BagError, bag_topics, decode, read_messages, TOPICS
from dbmr_ros.ros.conversions import (ConversionError, frame_to_arrays,
                                      intrinsics_from_camera_info, image_to_rgb, stamp_ns)
from dbmr_ros.ros.sync import ApproximateTimeSync

IMAGE, CLOUD, INFO = 'sensor_msgs/msg/Image', 'sensor_msgs/msg/PointCloud2', \
    'sensor_msgs/msg/CameraInfo'


@dataclass
class Topics:
    image: str
    points: str
    camera_info: Optional[str] = None
    gt: Optional[str] = None


def find_topics(bag, image=None, points=None, camera_info=None) -> Topics:
    """The given topics, or the bag's only topic of each type (the ground-truth mask and the
    detector's outputs are never taken for the camera image)."""
    types = bag_topics(bag)
    listing = ', '.join(f'{t} ({m})' for t, m in sorted(types.items())) or 'none'

    def pick(given, msgtype, what):
        if given:
            if types.get(given) != msgtype:
                raise BagError(f'{bag}: no {msgtype} topic {given}; the bag has: {listing}')
            return given
        found = [t for t, m in types.items() if m == msgtype and t != TOPICS['gt']
                 and not t.startswith('/dbmr_detector/')]
        if len(found) == 1:
            return found[0]
        if what == 'camera_info' and not found:
            return None
        raise BagError(f'{bag}: {"no" if not found else "several"} {msgtype} topics for the '
                       f'{what}; name it with --{what.replace("_", "-")}-topic. The bag has: '
                       f'{listing}')
    return Topics(pick(image, IMAGE, 'image'), pick(points, CLOUD, 'points'),
                  pick(camera_info, INFO, 'camera_info'),
                  TOPICS['gt'] if types.get(TOPICS['gt']) == IMAGE else None)


def _nearest_gap_ms(a: List[int], b: List[int]) -> Optional[float]:
    if not a or not b:
        return None
    b_sorted = np.sort(np.asarray(b))
    a = np.asarray(a)
    index = np.clip(np.searchsorted(b_sorted, a), 1, len(b_sorted) - 1) if len(b_sorted) > 1 \
        else np.zeros(len(a), dtype=int)
    gaps = np.minimum(np.abs(a - b_sorted[index]), np.abs(a - b_sorted[index - 1]))
    return float(gaps.min()) / 1e6


def frames(bag, topics: Topics, slop: float, queue_size: int, every: int = 1, warn=print):
    """Yield (stamp_ns, rgb, xyz, gt or None) for every `every`-th synchronised pair."""
    gts: Dict[int, np.ndarray] = {}
    if topics.gt:
        for connection, _, raw in read_messages(bag, {topics.gt}, warn):
            msg = decode(raw, Image, connection.topic, warn)
            if msg is not None:
                gts[stamp_ns(msg.header)] = image_to_rgb(msg)[..., 0] > 0
    pairs, stamps = [], {'image': [], 'points': []}
    sync = ApproximateTimeSync(2, queue_size, slop, lambda image, cloud: pairs.append(
        (image, cloud)))
    intrinsics = None
    count = 0
    wanted = {topics.image, topics.points} | ({topics.camera_info} - {None})
    for connection, _, raw in read_messages(bag, wanted, warn):
        if connection.topic == topics.camera_info:
            info = decode(raw, CameraInfo, connection.topic, warn)
            intrinsics = intrinsics_from_camera_info(info) if info is not None else intrinsics
            continue
        image_topic = connection.topic == topics.image
        msg = decode(raw, Image if image_topic else PointCloud2, connection.topic, warn)
        if msg is None:
            continue
        stamp = stamp_ns(msg.header)
        stamps['image' if image_topic else 'points'].append(stamp)
        sync.add(0 if image_topic else 1, stamp, msg)
        while pairs:
            image, cloud = pairs.pop(0)
            count += 1
            if (count - 1) % every:
                continue
            try:
                rgb, xyz = frame_to_arrays(image, cloud, intrinsics)
            except ConversionError as error:
                hint = ' (give --camera-info-topic)' if 'intrinsics' in str(error) else ''
                raise BagError(f'{bag}: frame {stamp_ns(image.header)}: {error}{hint}') \
                    from error
            yield stamp_ns(image.header), rgb, invalid_to_zero(xyz), gts.get(
                stamp_ns(image.header))
    if not count:
        gap = _nearest_gap_ms(stamps['image'], stamps['points'])
        raise BagError(
            f'{bag}: no image / cloud pair with stamps within sync_slop {slop:g} s: '
            f'{len(stamps["image"])} images on {topics.image}, {len(stamps["points"])} clouds '
            f'on {topics.points}' + ('' if gap is None else
                                     f'; the nearest image / cloud stamps are {gap:.1f} ms '
                                     'apart (raise --sync-slop if that is one frame)'))


def _write(category_dir: Path, split: str, folder: str, index: int, rgb, xyz, gt) -> None:
    base = category_dir / split / folder
    write_rgb(base / 'rgb' / f'{index:03d}.png', rgb)
    write_xyz(base / 'xyz' / f'{index:03d}.tiff', xyz)
    if split == 'test':
        mask = gt if gt is not None else np.zeros(rgb.shape[:2], dtype=bool)
        write_gray(base / 'gt' / f'{index:03d}.png', mask.astype(np.uint8) * 255)


def to_dataset(bag, output, category: str, topics: Optional[Topics] = None,
               slop: float = 0.05, queue_size: int = 10, every: int = 1,
               validation_fraction: float = 0.15, validation_bag=None, split: str = 'auto',
               overwrite: bool = False, warn=print) -> Dict[str, int]:
    """Write the category folder; returns the number of samples per split/folder. It is
    written beside the target and renamed into place at the end: a failed conversion leaves no
    half-written dataset, and --overwrite replaces the old one only once the new one is done."""
    category_dir = Path(output) / category
    refuse_existing_output(category_dir, overwrite, holds='a dataset')
    topics = topics or find_topics(bag)
    if split == 'test' and topics.gt is None:
        raise BagError(f'{bag} has no {TOPICS["gt"]} topic: it cannot become a test split')
    labelled = split == 'test' or (split == 'auto' and topics.gt is not None)
    staging = Path(output) / f'.{category}.{os.getpid()}.partial'
    shutil.rmtree(staging, ignore_errors=True)
    try:
        counts = _convert(bag, staging, topics, labelled, slop, queue_size, every,
                          validation_fraction, validation_bag, warn)
        if category_dir.exists():
            shutil.rmtree(category_dir)
        staging.rename(category_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _convert(bag, category_dir: Path, topics: Topics, labelled: bool, slop, queue_size, every,
             validation_fraction, validation_bag, warn) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for _, rgb, xyz, gt in frames(bag, topics, slop, queue_size, every, warn):
        if labelled:
            key = f'test/{"defective" if gt is not None and gt.any() else "good"}'
        else:
            key = 'train/good'
        _write(category_dir, *key.split('/'), counts.get(key, 0), rgb, xyz, gt)
        counts[key] = counts.get(key, 0) + 1
    if not labelled:
        if validation_bag is not None:
            for _, rgb, xyz, _ in frames(validation_bag, find_topics(
                    validation_bag, topics.image, topics.points, topics.camera_info), slop,
                    queue_size, every, warn):
                _write(category_dir, 'validation', 'good', counts.get('validation/good', 0),
                       rgb, xyz, None)
                counts['validation/good'] = counts.get('validation/good', 0) + 1
        else:
            _move_last_to_validation(category_dir, counts, validation_fraction)
    _write_intrinsics(bag, topics, category_dir, warn)
    return counts


def _move_last_to_validation(category_dir: Path, counts: Dict[str, int], fraction: float):
    """The last `fraction` of the recording (at least one sample when there are two) becomes
    validation/good: later parts, not a random draw, so near-duplicate neighbouring frames do
    not sit on both sides."""
    total = counts.get('train/good', 0)
    moved = min(max(int(round(total * fraction)), 1 if total >= 2 and fraction > 0 else 0),
                total - 1)
    for j, index in enumerate(range(total - moved, total)):
        for kind, suffix in (('rgb', 'png'), ('xyz', 'tiff')):
            target = category_dir / 'validation' / 'good' / kind / f'{j:03d}.{suffix}'
            target.parent.mkdir(parents=True, exist_ok=True)
            (category_dir / 'train' / 'good' / kind / f'{index:03d}.{suffix}').rename(target)
    if moved:
        counts['train/good'], counts['validation/good'] = total - moved, moved


def _write_intrinsics(bag, topics: Topics, category_dir: Path, warn) -> None:
    """calibration/camera_parameters.json (pinhole fx, fy, cx, cy) from the last camera_info,
    as the synthetic generator writes it; nothing without camera_info."""
    if topics.camera_info is None:
        return
    k = None
    for connection, _, raw in read_messages(bag, {topics.camera_info}, warn):
        info = decode(raw, CameraInfo, connection.topic, warn)
        if info is not None and intrinsics_from_camera_info(info) is not None:
            k, size = intrinsics_from_camera_info(info), (info.width, info.height)
    if k is None:
        return
    (category_dir / 'calibration').mkdir(parents=True, exist_ok=True)
    (category_dir / 'calibration' / 'camera_parameters.json').write_text(json.dumps(
        {'camera_type': 'pinhole', 'fx': k[0, 0], 'fy': k[1, 1], 'cx': k[0, 2], 'cy': k[1, 2],
         'image_width': size[0], 'image_height': size[1], 'source': str(bag)}, indent=2))
