"""The dbmr_detector node's parameters: one table (name, default, description, whether it can
change at run time, range or choices) declared on the node and checked at startup.

config/detect.yaml documents the same parameters for users; test_package.py keeps the two equal.
"""
from typing import NamedTuple, Optional, Sequence, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from dbmr_ros.model.scoring import SCORINGS

QOS_CHOICES = ('sensor_data', 'default')
DEVICES = ('auto', 'cpu', 'cuda')


class Parameter(NamedTuple):
    name: str
    default: object
    description: str
    read_only: bool = True            # only `threshold` and the outputs change while running
    limits: Optional[Tuple[float, float]] = None
    choices: Optional[Sequence[str]] = None


PARAMETERS = (
    Parameter('model_path', '', 'DBMRNet checkpoint (.safetensors); empty: the shipped '
              'default model'),
    Parameter('device', 'auto', 'inference device: auto | cpu | cuda', choices=DEVICES),
    Parameter('scoring', '', "anomaly map and score: learned (the scoring head) | paper (the "
              "DBMRNet paper's); empty: the checkpoint's", choices=('',) + SCORINGS),
    Parameter('threshold', -1.0, "image score above which a frame is anomalous; negative: the "
              "checkpoint's calibrated threshold. Changeable at run time.", read_only=False),
    Parameter('sync_slop', 0.05, 'max stamp difference (s) of a synchronised image/cloud pair',
              limits=(0.0, 10.0)),
    Parameter('sync_queue_size', 10, 'messages kept per input for synchronisation',
              limits=(1, 1000)),
    Parameter('input_qos', 'sensor_data', 'input QoS: sensor_data (best effort, camera '
              'drivers) | default (reliable)', choices=QOS_CHOICES),
    Parameter('heatmap_alpha', 0.5, 'opacity of the colour map over the image in ~/heatmap',
              read_only=False, limits=(0.0, 1.0)),
    Parameter('publish_cloud', True, 'publish ~/cloud (input points coloured by anomaly)',
              read_only=False),
    Parameter('max_rate_hz', 0.0, 'process at most this many frames per second (0: as fast as '
              'possible)', read_only=False, limits=(0.0, 1000.0)),
    Parameter('max_input_pixels', 16_777_216, 'larger images or clouds are rejected',
              read_only=False, limits=(1, 1 << 30)),
)


def descriptor(parameter: Parameter) -> ParameterDescriptor:
    ranges = {}
    if parameter.limits is not None:
        lo, hi = parameter.limits
        if isinstance(parameter.default, int):
            ranges['integer_range'] = [IntegerRange(from_value=lo, to_value=hi, step=1)]
        else:
            ranges['floating_point_range'] = [FloatingPointRange(
                from_value=float(lo), to_value=float(hi), step=0.0)]
    return ParameterDescriptor(description=parameter.description,
                               read_only=parameter.read_only, **ranges)


def declare(node) -> None:
    """Declare every parameter on `node`; a value outside its choices raises ValueError (ROS
    checks the ranges itself)."""
    for parameter in PARAMETERS:
        node.declare_parameter(parameter.name, parameter.default, descriptor(parameter))
        value = node.get_parameter(parameter.name).value
        if parameter.choices is not None and value not in parameter.choices:
            raise ValueError(f'parameter {parameter.name}={value!r}: choose one of '
                             f'{tuple(parameter.choices)}')
