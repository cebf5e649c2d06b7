"""The end-to-end demo behind `make demo`.

Generates a synthetic labelled test set (parts the shipped model never saw: another seed),
writes it as a rosbag2 (MCAP) of sensor messages, starts the dbmr_detector node with the shipped
default model, replays the bag through it over real ROS 2 with /clock, records the outputs,
evaluates them and prints a short table plus where the report and heatmap overlays are.
"""
import sys
import time
from pathlib import Path

from dbmr_ros.data.synthetic import write_dataset
from dbmr_ros.ros.bag import from_dataset, print_summary, replay_eval
from dbmr_ros.resources import default_model_path, use_large_data_profile


class _Args:
    def __init__(self, **values):
        self.__dict__.update(values)


def main(argv=None) -> int:
    started = time.monotonic()
    output = Path('demo_output') / time.strftime('%Y%m%d-%H%M%S')
    model = default_model_path()
    print(f'[demo] model: {model}')
    print(f'[demo] DDS profile: {use_large_data_profile()}')
    data = write_dataset(output / 'data', 'puck', size=256, n_train=0, n_validation=0,
                         n_test_good=6, n_test_per_defect=2, seed=2026)
    print(f'[demo] synthetic test set: {data}')
    bag = from_dataset(_Args(dataset='synthetic', data_root=output / 'data', category='puck',
                             split='test', output=output / 'test_bag', storage='mcap',
                             rate=2.0, frame_id='camera_color_optical_frame'))
    document = replay_eval(bag, output / 'replay', str(model), 'auto',
                           log=lambda m: print(f'[demo] {m}'))
    print()
    print_summary(document, output / 'replay' / 'eval')
    print(f'[demo] finished in {time.monotonic() - started:.0f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
