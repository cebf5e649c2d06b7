"""ament_python package setup for dbmr_ros."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'dbmr_ros'

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'benchmarks']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        ('share/' + PACKAGE + '/launch', glob('launch/*.launch.py')),
        ('share/' + PACKAGE + '/config', glob('config/*.yaml') + glob('config/*.rviz')
         + glob('config/*.xml')),
        ('share/' + PACKAGE + '/models', glob('models/*.safetensors') + glob('models/*.json')
         + glob('models/*.md')),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='dbmr_ros developers',
    maintainer_email='dev@dbmr-ros.org',
    description='Multimodal RGB + point cloud anomaly detection (DBMRNet) for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            # `ros2 run dbmr_ros <name>` and the `dbmr-<name>` commands on PATH.
            'detect = dbmr_ros.ros.node:main',
            'dbmr-detect = dbmr_ros.ros.node:main',
            'train = dbmr_ros.train:main',
            'dbmr-train = dbmr_ros.train:main',
            'calibrate = dbmr_ros.calibrate:main',
            'dbmr-calibrate = dbmr_ros.calibrate:main',
            'eval = dbmr_ros.evaluate:main',
            'dbmr-eval = dbmr_ros.evaluate:main',
            'infer = dbmr_ros.infer:main',
            'dbmr-infer = dbmr_ros.infer:main',
            'bag = dbmr_ros.ros.bag.cli:main',
            'dbmr-bag = dbmr_ros.ros.bag.cli:main',
            'make_synthetic = dbmr_ros.data.synthetic:main',
            'dbmr-synthetic = dbmr_ros.data.synthetic:main',
        ],
    },
)
