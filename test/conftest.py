"""Shared fixtures: real data from ../shared, small synthetic datasets, ROS isolation."""
import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / 'shared' / 'data'

# DDS discovery stays on loopback, and each test session gets its own domain.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(random.Random(os.getpid()).randint(10, 99)))
# Test processes publish multi-MB clouds too: the package's large-data profile, as the node.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE',
                      str(REPO / 'config' / 'fastdds_large_data.xml'))


def shared_path(*parts) -> Path:
    """A path under ../shared/data; skipped with a reason only where ../shared is absent, and a
    failure in CI (where it is always present)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f'real data {path} is absent (../shared is not beside this checkout)'
        if os.environ.get('CI'):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope='session')
def mvtec_root() -> Path:
    """Root holding the real MVTec 3D-AD cable_gland development subset."""
    return shared_path('mvtec3d', 'cable_gland').parent


@pytest.fixture(scope='session')
def rgbd_frames() -> Path:
    return shared_path('rgbd_frames')


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (category 'puck', 96 px) in the MVTec 3D-AD layout."""
    from dbmr_ros.data.synthetic import write_dataset
    root = tmp_path_factory.mktemp('synthetic')
    write_dataset(root, 'puck', size=96, n_train=6, n_validation=3, n_test_good=3,
                  n_test_per_defect=1, seed=3)
    return root


@pytest.fixture(autouse=True, scope='session')
def _private_cache(tmp_path_factory):
    """Preprocessing cache of the tests' own, unless the caller chose one (CI reuses nothing)."""
    if 'DBMR_CACHE_DIR' not in os.environ:
        os.environ['DBMR_CACHE_DIR'] = str(tmp_path_factory.mktemp('cache'))
    yield
