"""dbmr-bag: rosbag2 tools (sqlite3 and MCAP, via the pure-Python `rosbags` package).

    from-dataset  write a labelled test set as sensor messages (+ /ground_truth/mask)
    to-dataset    a recording -> a dataset folder (MVTec 3D-AD layout) to train or evaluate on
    play          publish a bag over ROS 2 with its recorded timing and QoS (+ /clock)
    record        record topics to a bag (raw, as received)
    eval          metrics, latency and drops from an input bag and a results bag
    replay-eval   start the node, play, record, evaluate: the whole loop in one command

Messages are stored as the CDR bytes rclpy itself sends, so the bags open in `ros2 bag info/play`
of any ROS 2 distro, and `ros2 bag play` works with the node as well as `dbmr-bag play` does.
"""
import argparse
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict

import rclpy
from rclpy.node import Node

from dbmr_ros.command import run_command
from dbmr_ros.data.datasets import DATASETS
from dbmr_ros.resources import use_dds_defaults, use_large_data_profile
from dbmr_ros.ros.bag.evaluation import evaluate_bags, print_summary
from dbmr_ros.ros.bag.from_dataset import from_dataset
from dbmr_ros.ros.bag.player import Player
from dbmr_ros.ros.bag.recorder import Recorder
from dbmr_ros.ros.bag.replay import replay_eval
from dbmr_ros.ros.bag.spin import BackgroundSpin
from dbmr_ros.ros.bag.storage import BagError
from dbmr_ros.ros.bag.to_dataset import find_topics, to_dataset


def _remaps(pairs) -> Dict[str, str]:
    remap = {}
    for pair in pairs or []:
        if ':=' not in pair:
            raise BagError(f'--remap expects from:=to, got {pair!r}')
        source, target = pair.split(':=', 1)
        remap[source] = target
    return remap


def cmd_play(args) -> int:
    rclpy.init()
    node = Node('dbmr_bag_player')
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        player = Player(node, args.bag, set(args.topics) if args.topics else None,
                        _remaps(args.remap), args.reliable,
                        warn=lambda m: node.get_logger().warning(m))
        short = player.wait_for_subscribers(args.wait_for_subscribers, args.wait_timeout,
                                            args.clock)
        if short:
            raise BagError(f'after {args.wait_timeout:g} s these topics have fewer than '
                           f'{args.wait_for_subscribers} subscribers (topic: count): {short}')
        time.sleep(args.delay)
        count = player.play(args.rate, args.clock, args.loop, stop=stop)
        print(f'published {count} messages from {args.bag}')
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def cmd_record(args) -> int:
    rclpy.init()
    node = Node('dbmr_bag_recorder', parameter_overrides=[
        rclpy.parameter.Parameter('use_sim_time', value=args.use_sim_time)])
    recorder = Recorder(node, args.output, args.topics, args.storage, args.messages)
    spinner = BackgroundSpin(node)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        missing = recorder.discover(args.discovery_timeout)
        if missing:
            node.get_logger().warning(f'not (yet) published, not recorded: {missing}')
        deadline = time.monotonic() + args.duration if args.duration else None
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline) \
                and not recorder.is_full():
            stop.wait(0.05)
    finally:
        recorder.close()
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'recorded {recorder.counts} to {args.output}')
    return 0


def cmd_to_dataset(args) -> int:
    topics = find_topics(args.bag, args.image_topic, args.points_topic, args.camera_info_topic)
    print(f'pairing {topics.image} with {topics.points}'
          + (f', intrinsics from {topics.camera_info}' if topics.camera_info else '')
          + (f', labels from {topics.gt}' if topics.gt and args.split != 'train' else ''))
    counts = to_dataset(args.bag, args.output, args.category, topics, args.sync_slop,
                        args.sync_queue_size, args.every, args.validation_fraction,
                        args.validation_bag, args.split, args.overwrite)
    print(f'wrote {Path(args.output) / args.category}: ' + ', '.join(
        f'{key} {count}' for key, count in sorted(counts.items())))
    return 0


def cmd_eval(args) -> int:
    document = evaluate_bags(args.input, args.results, args.output, args.threshold,
                             args.num_overlays)
    print_summary(document, Path(args.output))
    return 0


def cmd_replay_eval(args) -> int:
    document = replay_eval(args.bag, args.output, args.model_path, args.device, args.rate,
                           not args.realtime, args.timeout)
    print_summary(document, Path(args.output) / 'eval')
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='dbmr-bag', description=__doc__.split('\n')[0])
    parser.add_argument('--dds-defaults', action='store_true',
                        help="keep Fast DDS's defaults instead of config/fastdds_large_data.xml "
                             '(100 ms heartbeat: a lost fragment of a large message is resent '
                             'within 0.1 s, not 3 s); a FASTDDS_DEFAULT_PROFILES_FILE you set '
                             'always wins')
    sub = parser.add_subparsers(dest='command', required=True)
    p = sub.add_parser('from-dataset', help='write a dataset split as a labelled sensor bag')
    p.add_argument('--dataset', required=True, choices=DATASETS)
    p.add_argument('--data-root', required=True)
    p.add_argument('--category', required=True)
    p.add_argument('--split', default='test', choices=('train', 'validation', 'test'))
    p.add_argument('--output', required=True, help='bag folder to create')
    p.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    p.add_argument('--rate', type=float, default=2.0, help='frames per second of the stamps')
    p.add_argument('--frame-id', default='camera_color_optical_frame')
    p.set_defaults(func=lambda a: from_dataset(a) and 0)
    p = sub.add_parser('to-dataset', help='a recording -> a dataset folder (MVTec 3D-AD layout)')
    p.add_argument('bag')
    p.add_argument('--output', required=True, help='dataset root (the --data-root of dbmr-train)')
    p.add_argument('--category', required=True, help='category folder to create under it')
    p.add_argument('--image-topic', help='default: the bag\'s only Image topic')
    p.add_argument('--points-topic', help='default: the bag\'s only PointCloud2 topic')
    p.add_argument('--camera-info-topic', help='default: the bag\'s only CameraInfo topic '
                   '(needed for unorganized clouds)')
    p.add_argument('--sync-slop', type=float, default=0.05,
                   help='largest image / cloud stamp difference in seconds (as the node)')
    p.add_argument('--sync-queue-size', type=int, default=10)
    p.add_argument('--every', type=int, default=1, help='keep every n-th pair')
    p.add_argument('--validation-fraction', type=float, default=0.15,
                   help='the last part of the recording that becomes validation/good')
    p.add_argument('--validation-bag', help='a second recording for validation/good instead')
    p.add_argument('--split', default='auto', choices=('auto', 'train', 'test'),
                   help='auto: test (labelled) when the bag has /ground_truth/mask, else train')
    p.add_argument('--overwrite', action='store_true', help='replace an existing category')
    p.set_defaults(func=cmd_to_dataset)
    p = sub.add_parser('play', help='publish a bag over ROS 2')
    p.add_argument('bag')
    p.add_argument('--rate', type=float, default=1.0)
    p.add_argument('--clock', action='store_true', help='publish /clock (for use_sim_time)')
    p.add_argument('--loop', action='store_true')
    p.add_argument('--topics', nargs='+', help='only these topics')
    p.add_argument('--remap', nargs='+', help='from:=to topic remappings')
    p.add_argument('--reliable', action='store_true',
                   help='publish reliably whatever QoS the bag recorded')
    p.add_argument('--delay', type=float, default=0.5, help='seconds to wait before playing')
    p.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                   help='before playing, wait until every topic has N subscribers (a recorder '
                   'or node that must not miss the first message) and, with --clock, /clock '
                   'has one')
    p.add_argument('--wait-timeout', type=float, default=30.0,
                   help='seconds --wait-for-subscribers waits before giving up (exit 2)')
    p.set_defaults(func=cmd_play)
    p = sub.add_parser('record', help='record topics to a bag')
    p.add_argument('topics', nargs='+')
    p.add_argument('--output', required=True)
    p.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    p.add_argument('--use-sim-time', action='store_true', help='stamp with /clock time')
    p.add_argument('--duration', type=float, default=0.0, help='seconds (0: until Ctrl-C)')
    p.add_argument('--discovery-timeout', type=float, default=10.0)
    p.add_argument('--messages', type=int, default=0, metavar='N',
                   help='record N messages per topic, then stop (0: no limit)')
    p.set_defaults(func=cmd_record)
    p = sub.add_parser('eval', help='evaluate a results bag against an input bag')
    p.add_argument('--input', required=True, help='the bag that was played')
    p.add_argument('--results', required=True, help='the recorded detector outputs')
    p.add_argument('--output', required=True)
    p.add_argument('--threshold', type=float, help='default: the one the node reported')
    p.add_argument('--num-overlays', type=int, default=8)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser('replay-eval', help='node + play + record + eval in one command')
    p.add_argument('--bag', required=True)
    p.add_argument('--output', required=True)
    p.add_argument('--model-path', default='', help='default: the shipped model')
    p.add_argument('--device', default='auto')
    p.add_argument('--rate', type=float, default=1.0)
    p.add_argument('--realtime', action='store_true', help='recorded timing instead of '
                   'lockstep (frames the node cannot keep up with are dropped and counted)')
    p.add_argument('--timeout', type=float, default=120.0)
    p.set_defaults(func=cmd_replay_eval)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.dds_defaults:
        use_dds_defaults()
    else:
        use_large_data_profile()
    return run_command('dbmr-bag', lambda: args.func(args), more_errors=(BagError,))


if __name__ == '__main__':
    sys.exit(main())
