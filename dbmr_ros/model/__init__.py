"""DBMRNet in pure PyTorch: no ROS, no file I/O."""
from dbmr_ros.model.config import DBMRConfig, PRESETS
from dbmr_ros.model.dbmrnet import DBMRNet

__all__ = ['DBMRConfig', 'PRESETS', 'DBMRNet']
