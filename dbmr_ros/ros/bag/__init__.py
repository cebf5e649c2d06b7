"""rosbag2 tools (`dbmr-bag`): storage, from_dataset, player, recorder, evaluation, replay, cli.
Each module owns one of these; the names below are the package's public API."""
from dbmr_ros.ros.bag.cli import main
from dbmr_ros.ros.bag.evaluation import evaluate_bags, print_summary
from dbmr_ros.ros.bag.from_dataset import from_dataset
from dbmr_ros.ros.bag.player import Player
from dbmr_ros.ros.bag.recorder import Recorder
from dbmr_ros.ros.bag.replay import replay_eval
from dbmr_ros.ros.bag.storage import (BagError, read_frames, read_messages, RESULT_TOPICS,
                                      TOPICS)

__all__ = ['BagError', 'evaluate_bags', 'from_dataset', 'main', 'Player', 'print_summary',
           'read_frames', 'read_messages', 'Recorder', 'replay_eval', 'RESULT_TOPICS',
           'TOPICS']
