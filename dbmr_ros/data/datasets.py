"""Dataset readers: MVTec 3D-AD (and the synthetic generator, which writes the same layout) and
Eyescandies. A reader lists `SampleRef`s; `SampleRef.load()` reads one raw `Sample`."""
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import yaml

from dbmr_ros.data.io import read_gray, read_rgb, read_xyz
from dbmr_ros.data.sample import Sample

SPLITS = ('train', 'validation', 'test')
DATASETS = ('mvtec3d', 'eyescandies', 'synthetic')


class DatasetError(RuntimeError):
    """A dataset path, split or file is missing or malformed."""


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives. `xyz_path` keys the preprocessing cache."""

    name: str
    label: int
    defect: str
    xyz_path: Path
    loader: Callable[['SampleRef'], Sample]

    def load(self) -> Sample:
        return self.loader(self)


def open_dataset(kind: str, root, category: str, split: str) -> List[SampleRef]:
    """The samples of one split of one category, sorted, good ones first in test."""
    if kind not in DATASETS:
        raise DatasetError(f'unknown dataset {kind!r}; choose one of {DATASETS}')
    if split not in SPLITS:
        raise DatasetError(f'unknown split {split!r}; choose one of {SPLITS}')
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f'data root {root} does not exist')
    if kind == 'eyescandies':
        return _eyescandies(root, category, split)
    return _mvtec3d(root, category, split)


# --- MVTec 3D-AD layout: <class>/<split>/<defect>/{rgb,xyz,gt}/NNN.{png,tiff} ----------------

def _mvtec3d(root: Path, category: str, split: str) -> List[SampleRef]:
    split_dir = root / category / split
    if not split_dir.is_dir():
        raise DatasetError(f'{split_dir} does not exist (expected the MVTec 3D-AD layout '
                           f'<root>/{category}/{{train,validation,test}}/<defect>/{{rgb,xyz}})')
    defects = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    defects.sort(key=lambda d: d != 'good')
    refs = []
    for defect in defects:
        for xyz_path in sorted((split_dir / defect / 'xyz').glob('*.tiff')):
            refs.append(SampleRef(name=f'{category}/{split}/{defect}/{xyz_path.stem}',
                                  label=int(defect != 'good'), defect=defect,
                                  xyz_path=xyz_path, loader=_load_mvtec3d))
    if not refs:
        raise DatasetError(f'no samples found under {split_dir}/*/xyz/*.tiff')
    return refs


def _load_mvtec3d(ref: SampleRef) -> Sample:
    sample_dir, stem = ref.xyz_path.parent.parent, ref.xyz_path.stem
    rgb = read_rgb(sample_dir / 'rgb' / f'{stem}.png')
    xyz = read_xyz(ref.xyz_path)
    gt_path = sample_dir / 'gt' / f'{stem}.png'
    gt = read_gray(gt_path) > 0 if gt_path.exists() else None
    if gt is None and ref.label == 1:
        raise DatasetError(f'anomalous sample {ref.name} has no gt mask at {gt_path}')
    if gt is None and '/test/' in ref.name:
        gt = np.zeros(rgb.shape[:2], dtype=bool)
    intrinsics = _calibration(sample_dir.parent.parent)
    return Sample(rgb=rgb, xyz=xyz, gt=gt, label=ref.label, defect=ref.defect, name=ref.name,
                  intrinsics=intrinsics)


def _calibration(category_dir: Path) -> Optional[np.ndarray]:
    """Pinhole K from calibration/camera_parameters.json where it has fx/fy/cx/cy (synthetic).

    MVTec 3D-AD's own file describes a HALCON division-model camera, which is not a pinhole:
    its organized xyz maps need no intrinsics, so None is returned for it.
    """
    path = category_dir / 'calibration' / 'camera_parameters.json'
    if not path.exists():
        return None
    params = json.loads(path.read_text())
    if not {'fx', 'fy', 'cx', 'cy'} <= set(params):
        return None
    return np.array([[params['fx'], 0, params['cx']], [0, params['fy'], params['cy']],
                     [0, 0, 1]], dtype=np.float64)


# --- Eyescandies: <Class>/{train,val,test_public}/data/NNN_* --------------------------------

EYESCANDIES_SPLITS = {'train': 'train', 'validation': 'val', 'test': 'test_public'}
EYESCANDIES_FOCAL = 711.11  # px, the dataset's virtual camera


def _eyescandies(root: Path, category: str, split: str) -> List[SampleRef]:
    data_dir = root / category / EYESCANDIES_SPLITS[split] / 'data'
    if not data_dir.is_dir():
        raise DatasetError(f'{data_dir} does not exist (expected the Eyescandies layout '
                           f'<root>/{category}/{{train,val,test_public}}/data/NNN_*)')
    refs = []
    for depth_path in sorted(data_dir.glob('*_depth.png')):
        prefix = depth_path.name[:-len('_depth.png')]
        mask_path = data_dir / f'{prefix}_mask.png'
        label = 0
        if split == 'test':
            if not mask_path.exists():
                raise DatasetError(f'test sample {prefix} has no mask {mask_path}')
            label = int(read_gray(mask_path).any())
        refs.append(SampleRef(name=f'{category}/{split}/{prefix}', label=label,
                              defect='bad' if label else 'good', xyz_path=depth_path,
                              loader=_load_eyescandies))
    if not refs:
        raise DatasetError(f'no samples found in {data_dir} (*_depth.png)')
    refs.sort(key=lambda r: r.label)
    return refs


def eyescandies_depth_to_xyz(depth_png: np.ndarray, depth_min: float, depth_max: float,
                             focal: float = EYESCANDIES_FOCAL) -> np.ndarray:
    """uint16 (H, W) depth PNG -> (H, W, 3) float32 camera-frame points, principal point at the
    image centre ((W - 1) / 2, (H - 1) / 2). Zero PNG values are invalid and map to (0, 0, 0)."""
    height, width = depth_png.shape
    depth = depth_png.astype(np.float64) / 65535.0 * (depth_max - depth_min) + depth_min
    v, u = np.mgrid[0:height, 0:width]
    x = (u - (width - 1) / 2.0) * depth / focal
    y = (v - (height - 1) / 2.0) * depth / focal
    xyz = np.stack([x, y, depth], axis=-1).astype(np.float32)
    xyz[depth_png == 0] = 0.0
    return xyz


def _load_eyescandies(ref: SampleRef) -> Sample:
    data_dir = ref.xyz_path.parent
    prefix = ref.xyz_path.name[:-len('_depth.png')]
    info = yaml.safe_load((data_dir / f'{prefix}_info_depth.yaml').read_text())
    norm = info['normalization']
    xyz = eyescandies_depth_to_xyz(read_gray(ref.xyz_path, np.uint16),
                                   float(norm['min']), float(norm['max']))
    rgb = read_rgb(data_dir / f'{prefix}_image_4.png')
    pose_path = data_dir / f'{prefix}_pose.txt'
    extras = {'pose': np.loadtxt(pose_path).reshape(4, 4)} if pose_path.exists() else {}
    mask_path = data_dir / f'{prefix}_mask.png'
    gt = read_gray(mask_path) > 0 if mask_path.exists() else None
    height, width = xyz.shape[:2]
    intrinsics = np.array([[EYESCANDIES_FOCAL, 0, (width - 1) / 2],
                           [0, EYESCANDIES_FOCAL, (height - 1) / 2], [0, 0, 1]])
    return Sample(rgb=rgb, xyz=xyz, gt=gt, label=ref.label, defect=ref.defect, name=ref.name,
                  intrinsics=intrinsics, extras=extras)
