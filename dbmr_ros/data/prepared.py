"""A dataset split preprocessed to model size, as the training, calibration and selection code
reads it (arrays in memory; the background removal cached, never written into the dataset)."""
import numpy as np

from dbmr_ros.data.datasets import DatasetError, open_dataset
from dbmr_ros.data.preprocess import preprocess, PreprocessConfig
from dbmr_ros.data.preprocess_cache import PreprocessCache


def load_split(kind, root, category, split, pcfg: PreprocessConfig, cache: PreprocessCache):
    """The good samples of a split preprocessed to model size: rgb (N, S, S, 3) uint8, xyz
    (N, S, S, 3) float32 (the background removal is cached, never written into the dataset).
    Its callers train or calibrate on good parts, so labelled defects in the split (test's,
    or a validation folder of real defects) are left out, never taken for good ones."""
    refs = [ref for ref in open_dataset(kind, root, category, split) if not ref.label]
    if not refs:
        raise DatasetError(f'{kind} {category}/{split} holds no good samples')
    rgbs, xyzs = [], []
    for ref in refs:
        sample = ref.load()
        rgb, xyz = preprocess(sample.rgb, sample.xyz, pcfg, cache.cleaned(ref.xyz_path,
                                                                          sample.xyz))
        rgbs.append(rgb)
        xyzs.append(xyz)
    return np.stack(rgbs), np.stack(xyzs)


def labelled_defects(kind, root, category, split: str = 'validation') -> int:
    """How many labelled defects a split holds (validation: real ones a user keeps there for
    selection; MVTec 3D-AD's holds none)."""
    return sum(ref.label for ref in open_dataset(kind, root, category, split))
