"""replay-eval: start the node, play a bag through it in lockstep, record, evaluate."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import rclpy
from rclpy.node import Node

from dbmr_ros.files import refuse_existing_output
from dbmr_ros.ros.bag.evaluation import evaluate_bags
from dbmr_ros.ros.bag.player import Player
from dbmr_ros.ros.bag.recorder import Recorder
from dbmr_ros.ros.bag.spin import BackgroundSpin
from dbmr_ros.ros.bag.storage import BagError, RESULT_TOPICS, TOPICS


def replay_eval(bag, output, model_path='', device='auto', rate=1.0, lockstep=True,
                timeout=120.0, log=print) -> dict:
    """Start the node (use_sim_time, reliable inputs), play the bag with /clock, record the
    results, evaluate. Returns the evaluation document."""
    output = refuse_existing_output(output, flag='', holds='results')
    output.mkdir(parents=True, exist_ok=True)
    results_bag = output / 'results_bag'
    node_log = open(output / 'node.log', 'w')
    command = [str(Path(sys.executable).parent / 'dbmr-detect'), '--ros-args',
               '-p', f'model_path:={model_path}', '-p', f'device:={device}',
               '-p', 'input_qos:=default', '-p', 'use_sim_time:=true',
               '-r', f'image:={TOPICS["image"]}', '-r', f'points:={TOPICS["points"]}',
               '-r', f'camera_info:={TOPICS["camera_info"]}']
    detector = subprocess.Popen(command, stdout=node_log, stderr=subprocess.STDOUT)
    context = rclpy.Context()  # private: callers may have their own rclpy running
    rclpy.init(context=context)
    node = Node('dbmr_replay_eval', context=context, parameter_overrides=[
        rclpy.parameter.Parameter('use_sim_time', value=True)])
    spinner = BackgroundSpin(node, context)
    recorder = None
    try:
        player = Player(node, bag, {TOPICS['image'], TOPICS['points'], TOPICS['camera_info']},
                        reliable=True, warn=log)
        frames = sorted(t for t, topic, _ in player.messages if topic == TOPICS['image'])
        deadline = time.monotonic() + timeout
        image_pub, points_pub = player.publishers[TOPICS['image']], player.publishers[
            TOPICS['points']]
        while time.monotonic() < deadline and not (
                image_pub.get_subscription_count() and points_pub.get_subscription_count()
                and all(node.count_publishers(t) for t in RESULT_TOPICS)):
            if detector.poll() is not None:
                raise BagError(f'the detector exited with {detector.returncode}: '
                               f'{(output / "node.log").read_text()}')
            time.sleep(0.1)
        recorder = Recorder(node, results_bag, list(RESULT_TOPICS))
        missing = recorder.discover(max(deadline - time.monotonic(), 1.0))
        if missing:
            raise BagError(f'the detector did not come up (no {missing}); see '
                           f'{output / "node.log"}')
        log(f'replaying {len(frames)} frames of {bag} through the detector '
            f'({"lockstep" if lockstep else f"rate {rate}"})')

        def done_count():
            return recorder.counts[RESULT_TOPICS[0]]
        sent = {'frames': 0}

        def gate(topic, _):
            # Lockstep: the next frame's image waits for the previous frame's result.
            if topic != TOPICS['image']:
                return True
            ready = not lockstep or done_count() >= sent['frames']
            if ready:
                sent['frames'] += 1
            return ready
        finished = time.monotonic() + timeout
        progress = {'counts': None, 'since': time.monotonic()}

        def linger():
            """Keep /clock running until every frame's result and map are recorded, or until
            nothing new has arrived for 5 s (frames the node dropped never get one)."""
            counts = [recorder.counts[t] for t in RESULT_TOPICS]
            if counts != progress['counts']:
                progress.update(counts=counts, since=time.monotonic())
            return (min(counts) < len(frames) and time.monotonic() - progress['since'] < 5.0
                    and time.monotonic() < finished)
        player.play(rate, clock=True, gate=gate, gate_timeout=timeout / 4, linger=linger)
    finally:
        if recorder is not None:
            recorder.close()
        spinner.stop()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
        if detector.poll() is None:
            detector.send_signal(signal.SIGINT)
            try:
                detector.wait(timeout=15)
            except subprocess.TimeoutExpired:
                detector.kill()
        node_log.close()
    return evaluate_bags(bag, results_bag, output / 'eval', warn=log)
