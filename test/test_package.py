"""Package layout: lint, colcon build as an ament_python package, launch file and metadata."""
import ast
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import yaml

from dbmr_ros.ros.launch_arguments import OVERRIDABLE, parameter_overrides
from dbmr_ros.ros.parameters import PARAMETERS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_flake8_at_ament_settings():
    result = subprocess.run([sys.executable, '-m', 'flake8', 'dbmr_ros', 'test', 'benchmarks',
                             'launch', 'setup.py'], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_ros_package_imports_rclpy():
    offenders = []
    for path in (REPO / 'dbmr_ros').rglob('*.py'):
        if 'ros' in path.relative_to(REPO / 'dbmr_ros').parts[:1]:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ''] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split('.')[0] in ('rclpy', 'sensor_msgs', 'std_msgs') for n in names):
                offenders.append(str(path))
    assert not offenders


def test_package_xml_format_3():
    root = ElementTree.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3' and root.findtext('name') == 'dbmr_ros'
    exec_deps = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'visualization_msgs', 'diagnostic_msgs',
            'python3-numpy', 'python3-opencv', 'python3-torch'} <= exec_deps
    assert {e.text for e in root.findall('test_depend')} >= {'ament_flake8', 'ament_pep257',
                                                             'python3-pytest'}
    assert root.find('export/build_type').text == 'ament_python'


def _console_scripts():
    text = (REPO / 'setup.py').read_text()
    return dict(re.findall(r"'([\w-]+) = ([\w.]+:\w+)'", text))


def test_console_scripts_resolve():
    import importlib
    scripts = _console_scripts()
    assert {'detect', 'dbmr-detect', 'train', 'dbmr-train', 'eval', 'dbmr-eval', 'bag',
            'dbmr-bag', 'dbmr-infer', 'calibrate', 'dbmr-calibrate'} <= set(scripts)
    for name, target in scripts.items():
        module, function = target.split(':')
        assert callable(getattr(importlib.import_module(module), function)), name


def test_launch_file_matches_setup_py():
    """The launch file is parsed (launch_ros is not installable here) and its Node actions are
    checked against the package's executables and parameters."""
    source = (REPO / 'launch' / 'detect.launch.py').read_text()
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, 'id', '') == 'Node']
    kwargs = [{k.arg: k.value for k in c.keywords} for c in calls]
    detector = next(k for k in kwargs if ast.literal_eval(k['package']) == 'dbmr_ros')
    assert ast.literal_eval(detector['executable']) in _console_scripts()
    assert ast.literal_eval(detector['name']) == 'dbmr_detector'
    assert 'node_executable' not in source and 'node_name' not in source
    arguments = {ast.literal_eval(c.args[0]) for c in ast.walk(tree)
                 if isinstance(c, ast.Call) and getattr(c.func, 'id', '') ==
                 'DeclareLaunchArgument'}
    assert {'namespace', 'model_path', 'device', 'scoring', 'threshold', 'params_file',
            'image_topic', 'points_topic', 'camera_info_topic', 'use_sim_time',
            'rviz'} <= arguments
    assert ast.unparse(detector['namespace']) == "LaunchConfiguration('namespace')"
    # Issue #12 bug 1: parameters are the user's file, then only the arguments given.
    assert ast.unparse(detector['parameters']) == \
        "[LaunchConfiguration('params_file')] + ([overrides] if overrides else [])"
    defaults = {ast.literal_eval(c.args[0]): ast.literal_eval(
        next(k.value for k in c.keywords if k.arg == 'default_value'))
        for c in ast.walk(tree) if isinstance(c, ast.Call)
        and getattr(c.func, 'id', '') == 'DeclareLaunchArgument'
        and isinstance(c.args[0], ast.Constant)
        and isinstance(next(k.value for k in c.keywords if k.arg == 'default_value'),
                       ast.Constant)}
    assert all(defaults[name] == '' for name in OVERRIDABLE), defaults
    remapped = {ast.literal_eval(t.elts[0]) for t in detector['remappings'].elts}
    assert remapped == {'image', 'points', 'camera_info'}
    # The processes it starts get the large-data profile unless the user chose one.
    set_env = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
               and getattr(c.func, 'id', '') == 'SetEnvironmentVariable']
    assert [ast.literal_eval(c.args[0]) for c in set_env] == ['FASTDDS_DEFAULT_PROFILES_FILE']
    fallback = set_env[0].args[1]
    assert fallback.func.id == 'EnvironmentVariable' and \
        ast.literal_eval(fallback.args[0]) == 'FASTDDS_DEFAULT_PROFILES_FILE'
    assert 'fastdds_large_data.xml' in ast.unparse(fallback)


def test_launch_arguments_override_the_params_file_only_when_given():
    """Issue #12 bug 1: a model_path in the user's YAML survives a launch without
    model_path:=; the arguments that were given are typed."""
    not_given = {name: '' for name in OVERRIDABLE}
    assert parameter_overrides(not_given) == {}
    given = dict(not_given, model_path='/models/line3.safetensors', use_sim_time='True',
                 threshold='2.5')
    assert parameter_overrides(given) == {'model_path': '/models/line3.safetensors',
                                          'use_sim_time': True, 'threshold': 2.5}
    with pytest.raises(ValueError, match="use_sim_time:='yes': expected true or false"):
        parameter_overrides({'use_sim_time': 'yes'})
    with pytest.raises(ValueError, match="threshold:='high': expected a number"):
        parameter_overrides({'threshold': 'high'})
    # Every overridable argument is a node parameter of that type in config/detect.yaml.
    values = yaml.safe_load((REPO / 'config' / 'detect.yaml').read_text())[
        '/**']['ros__parameters']
    for name, kind in OVERRIDABLE.items():
        if name != 'use_sim_time':  # a parameter every node has
            assert isinstance(values[name], kind), name


def test_launch_description_builds_where_launch_ros_exists():
    pytest.importorskip('launch_ros', reason='launch_ros is not installable from PyPI here; '
                        'the file is checked statically above')
    import importlib.util
    spec = importlib.util.spec_from_file_location('detect_launch',
                                                  REPO / 'launch' / 'detect.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.generate_launch_description().entities


def test_params_file_declares_every_node_parameter():
    params = yaml.safe_load((REPO / 'config' / 'detect.yaml').read_text())
    values = params['/**']['ros__parameters']
    assert values == {p.name: p.default for p in PARAMETERS}  # same names, same defaults
    text = (REPO / 'config' / 'detect.yaml').read_text()
    for name in values:  # every parameter has a comment right above it
        lines = text.splitlines()
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(name + ':'))
        assert lines[index - 1].strip().startswith('#'), name


def test_rviz_config_displays():
    config = yaml.safe_load((REPO / 'config' / 'dbmr.rviz').read_text())
    displays = config['Visualization Manager']['Displays']
    by_class = {}
    for display in displays:
        by_class.setdefault(display['Class'], []).append(display)
    topics = {d['Topic']['Value'] for d in by_class['rviz_default_plugins/Image']}
    assert '/dbmr_detector/heatmap' in topics and len(topics) == 2
    cloud = by_class['rviz_default_plugins/PointCloud2'][0]
    assert cloud['Topic']['Value'] == '/dbmr_detector/cloud'
    assert cloud['Color Transformer'] == 'RGB8'
    assert cloud['Topic']['Reliability Policy'] == 'Best Effort'
    assert by_class['rviz_default_plugins/MarkerArray'][0]['Topic']['Value'] == \
        '/dbmr_detector/markers'
    assert config['Visualization Manager']['Global Options']['Fixed Frame']


def test_fastdds_profile_is_a_default_writer_profile():
    """Fast DDS applies the profile to every writer of a process that loads it: the default
    data_writer profile, with the 100 ms heartbeat docs/benchmarks.md measures."""
    from dbmr_ros.resources import dds_profile_path
    ns = {'f': 'http://www.eprosima.com'}
    root = ElementTree.parse(dds_profile_path()).getroot()
    writer = root.find('f:data_writer', ns)
    assert writer.get('is_default_profile') == 'true'
    period = writer.find('f:times/f:heartbeat_period', ns)
    seconds = int(period.find('f:sec', ns).text) + int(period.find('f:nanosec', ns).text) * 1e-9
    assert seconds == pytest.approx(0.1)


def test_fastdds_loads_the_profile(tmp_path):
    """This Fast DDS reads the file named by FASTDDS_DEFAULT_PROFILES_FILE: ours parses without
    a word, a broken copy is reported (so silence means it was read, not ignored)."""
    from dbmr_ros.resources import dds_profile_path
    script = ('import rclpy; from std_msgs.msg import String; rclpy.init(); '
              "node = rclpy.create_node('dds_profile_probe'); "
              "node.create_publisher(String, 'probe', 10); node.destroy_node(); rclpy.shutdown()")
    broken = tmp_path / 'broken.xml'
    broken.write_text(dds_profile_path().read_text().replace('<sec>0</sec>', '<sec>x</sec>'))
    for profile, complaint in ((dds_profile_path(), False), (broken, True)):
        run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ,
                                                  FASTDDS_DEFAULT_PROFILES_FILE=str(profile)))
        assert run.returncode == 0, run.stderr
        assert ('XMLPARSER' in run.stderr) == complaint, run.stderr


def test_colcon_build(tmp_path):
    """colcon sees an ament_python ROS package, builds it, and setup.bash exports it."""
    colcon = BIN / 'colcon'
    source = tmp_path / 'src' / 'dbmr_ros'
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        '.venv', '.git', 'build', 'install', 'log', '__pycache__', '*.egg-info', 'demo_output'))
    env = dict(os.environ, PATH=f'{BIN}:{os.environ["PATH"]}')
    listed = subprocess.run([str(colcon), 'list'], cwd=tmp_path, env=env, capture_output=True,
                            text=True, check=True).stdout
    assert '(ros.ament_python)' in listed, listed
    build = subprocess.run([str(colcon), 'build', '--event-handlers', 'console_cohesion-'],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout + build.stderr
    install = tmp_path / 'install' / 'dbmr_ros'
    assert (install / 'lib' / 'dbmr_ros' / 'detect').exists()
    assert (install / 'share' / 'dbmr_ros' / 'launch' / 'detect.launch.py').exists()
    assert (install / 'share' / 'dbmr_ros' / 'config' / 'detect.yaml').exists()
    assert (install / 'share' / 'dbmr_ros' / 'config' / 'fastdds_large_data.xml').exists()
    assert (install / 'share' / 'ament_index' / 'resource_index' / 'packages' /
            'dbmr_ros').exists()
    probe = subprocess.run(['bash', '-c', 'source install/setup.bash && echo $AMENT_PREFIX_PATH'
                            ' && python -c "from dbmr_ros.resources import share_dir; '
                            'print(share_dir())"'],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert str(install) in probe.stdout.splitlines()[0]
    assert probe.stdout.splitlines()[1] == str(install / 'share' / 'dbmr_ros')
    # Issue #12 bug 2: the installed train finds its preset config in the share directory
    # (it looked in site-packages/config and crashed) and gets as far as the missing data.
    train = subprocess.run(['bash', '-c', 'source install/setup.bash && '
                            f'{install}/lib/dbmr_ros/train --dataset synthetic --data-root '
                            f'{tmp_path}/no_data --category puck --output {tmp_path}/run'],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert train.returncode == 2, train.stdout + train.stderr
    assert 'no_data' in train.stderr and 'Traceback' not in train.stderr, train.stderr
    assert 'train_tiny.yaml' not in train.stderr
