"""Everything that touches ROS 2 (the only package that imports rclpy)."""
