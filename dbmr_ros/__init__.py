"""dbmr_ros: multimodal (RGB + point cloud) anomaly detection with DBMRNet, for ROS 2."""
__version__ = '0.1.0'
