"""Where the package's shared files (models/, config/, launch/) are: the ament share directory
when the package is installed with colcon, else the source tree."""
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
