"""Launch the dbmr_detector node (and optionally rviz2).

    ros2 launch dbmr_ros detect.launch.py image_topic:=/camera/color/image_raw \
        points_topic:=/camera/depth/color/points rviz:=true

Parameters come from params_file (config/detect.yaml by default); model_path, device, scoring,
threshold and use_sim_time override it only when given. Two cameras, two detectors:

    ros2 launch dbmr_ros detect.launch.py namespace:=left image_topic:=/left/color/image_raw ...
    ros2 launch dbmr_ros detect.launch.py namespace:=right image_topic:=/right/color/image_raw ...
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node

from dbmr_ros.ros.launch_arguments import OVERRIDABLE, parameter_overrides


def _nodes(context):
    """The detector (and rviz2): built at launch time, when it is known which arguments the
    user gave, so that a default never replaces a value of the user's parameters file."""
    overrides = parameter_overrides({name: LaunchConfiguration(name).perform(context)
                                     for name in OVERRIDABLE})
    detector = Node(
        package='dbmr_ros',
        executable='detect',
        name='dbmr_detector',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        parameters=[LaunchConfiguration('params_file')] + ([overrides] if overrides else []),
        remappings=[('image', LaunchConfiguration('image_topic')),
                    ('points', LaunchConfiguration('points_topic')),
                    ('camera_info', LaunchConfiguration('camera_info_topic'))],
    )
    if LaunchConfiguration('rviz').perform(context).lower() != 'true':
        return [detector]
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='rviz2',
        namespace=LaunchConfiguration('namespace'),
        arguments=['-d', LaunchConfiguration('rviz_config')],
        parameters=[{'use_sim_time': overrides.get('use_sim_time', False)}],
    )
    return [detector, rviz]


def generate_launch_description():
    share = get_package_share_directory('dbmr_ros')
    not_given = 'empty: the value in params_file'
    arguments = [
        DeclareLaunchArgument('namespace', default_value='',
                              description='namespace of the detector (one per camera)'),
        DeclareLaunchArgument('params_file',
                              default_value=os.path.join(share, 'config', 'detect.yaml'),
                              description='node parameters (YAML)'),
        DeclareLaunchArgument('model_path', default_value='',
                              description=f'checkpoint; {not_given} (there, empty: the shipped '
                              'default model)'),
        DeclareLaunchArgument('device', default_value='',
                              description=f'auto | cpu | cuda; {not_given}'),
        DeclareLaunchArgument('scoring', default_value='',
                              description=f'learned | paper; {not_given}'),
        DeclareLaunchArgument('threshold', default_value='',
                              description=f'image score threshold; {not_given}'),
        DeclareLaunchArgument('use_sim_time', default_value='',
                              description=f'true when replaying a bag with --clock; {not_given}'),
        DeclareLaunchArgument('image_topic', default_value='/camera/color/image_raw'),
        DeclareLaunchArgument('points_topic', default_value='/camera/depth/color/points'),
        DeclareLaunchArgument('camera_info_topic', default_value='/camera/color/camera_info'),
        DeclareLaunchArgument('rviz', default_value='false', description='start rviz2'),
        DeclareLaunchArgument('rviz_config',
                              default_value=os.path.join(share, 'config', 'dbmr.rviz'),
                              description='rviz2 display config (its topics are those of the '
                              'detector without namespace)'),
    ]
    # Multi-MB clouds and images between processes on one host need the large shared-memory
    # segment of the package's Fast DDS profile (config/fastdds_large_data.xml says why); a
    # profile the user already chose is kept.
    dds_profile = SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', EnvironmentVariable(
        'FASTDDS_DEFAULT_PROFILES_FILE',
        default_value=os.path.join(share, 'config', 'fastdds_large_data.xml')))
    return LaunchDescription(arguments + [dds_profile, OpaqueFunction(function=_nodes)])
