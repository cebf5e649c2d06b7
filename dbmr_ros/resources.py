"""Where the package's shared files (models/, config/, launch/) are: the ament share directory
when the package is installed with colcon, else the source tree."""
import os
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = 'dbmr_default.safetensors'


def share_dir() -> Path:
    try:
        from ament_index_python.packages import (get_package_share_directory,
                                                 PackageNotFoundError)
        try:
            return Path(get_package_share_directory('dbmr_ros'))
        except (PackageNotFoundError, OSError):  # OSError: AMENT_PREFIX_PATH is unset
            pass
    except ImportError:
        pass
    return SOURCE_ROOT


def default_model_path() -> Path:
    return share_dir() / 'models' / DEFAULT_MODEL


def dds_profile_path() -> Path:
    """Fast DDS profile for large RGB-D messages (config/fastdds_large_data.xml explains it)."""
    return share_dir() / 'config' / 'fastdds_large_data.xml'


def use_large_data_profile() -> str:
    """Make this process and the ones it starts use that profile, unless the user already chose
    a Fast DDS profile. Call before the first rclpy.init(). Returns the profile in effect."""
    return os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(dds_profile_path()))


def use_dds_defaults() -> None:
    """Fast DDS's own defaults for this process and the ones it starts (the node included: an
    empty FASTDDS_DEFAULT_PROFILES_FILE counts as the user's choice), for comparisons."""
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = ''
