"""Launch the dbmr_detector node (and optionally rviz2).

    ros2 launch dbmr_ros detect.launch.py image_topic:=/camera/color/image_raw \
        points_topic:=/camera/depth/color/points rviz:=true
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share = get_package_share_directory('dbmr_ros')
    arguments = [
        DeclareLaunchArgument('model_path', default_value='',
                              description='checkpoint; empty: the shipped default model'),
        DeclareLaunchArgument('device', default_value='auto', description='auto | cpu | cuda'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'detect.yaml'),
                              description='node parameters (YAML)'),
        DeclareLaunchArgument('image_topic', default_value='/camera/color/image_raw'),
        DeclareLaunchArgument('points_topic', default_value='/camera/depth/color/points'),
        DeclareLaunchArgument('camera_info_topic', default_value='/camera/color/camera_info'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='true when replaying a bag with --clock'),
        DeclareLaunchArgument('rviz', default_value='false', description='start rviz2'),
    ]
    detector = Node(
        package='dbmr_ros',
        executable='detect',
        name='dbmr_detector',
        output='screen',
        parameters=[LaunchConfiguration('params_file'),
                    {'model_path': ParameterValue(LaunchConfiguration('model_path'),
                                                  value_type=str),
                     'device': ParameterValue(LaunchConfiguration('device'), value_type=str),
                     'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        remappings=[('image', LaunchConfiguration('image_topic')),
                    ('points', LaunchConfiguration('points_topic')),
                    ('camera_info', LaunchConfiguration('camera_info_topic'))],
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        arguments=['-d', os.path.join(share, 'config', 'dbmr.rviz')],
        parameters=[{'use_sim_time': ParameterValue(LaunchConfiguration('use_sim_time'),
                                                    value_type=bool)}],
        condition=IfCondition(LaunchConfiguration('rviz')),
    )
    # Multi-MB clouds and images between processes on one host need the large shared-memory
    # segment of the package's Fast DDS profile (config/fastdds_large_data.xml says why); a
    # profile the user already chose is kept.
    dds_profile = SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', EnvironmentVariable(
        'FASTDDS_DEFAULT_PROFILES_FILE',
        default_value=os.path.join(share, 'config', 'fastdds_large_data.xml')))
    return LaunchDescription(arguments + [dds_profile, detector, rviz])
