"""Evaluating a played input bag against the recorded detector outputs."""
from pathlib import Path
from typing import Dict

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from dbmr_ros.ros import result_message
from dbmr_ros.ros.bag.storage import decode, read_frames, read_messages, RESULT_TOPICS
from dbmr_ros.ros.conversions import ConversionError, image_to_float, stamp_ns


def evaluate_bags(input_bag, results_bag, output, threshold=None, num_overlays: int = 8,
                  warn=print) -> dict:
    """Match results to inputs by header stamp; metrics (where the input bag has ground truth),
    latency (result receive time - input stamp, bag clock) and frames without a result."""
    from dbmr_ros.report import CategoryResults, overlay_indices, write_evaluation, write_overlay
    from dbmr_ros.visualize import display_range
    frames = read_frames(input_bag, warn=warn)
    frames = {s: f for s, f in frames.items() if 'rgb' in f}
    results: Dict[int, dict] = {}
    scoring = 'learned'
    for connection, log_time, raw in read_messages(results_bag, set(RESULT_TOPICS), warn):
        if connection.topic == RESULT_TOPICS[0]:
            msg = decode(raw, DiagnosticArray, connection.topic, warn)
            result = None if msg is None else result_message.decode(msg)
            if result is None:
                continue
            entry = results.setdefault(result.stamp_ns, {})
            entry.update(score=result.score, latency_ms=(log_time - result.stamp_ns) / 1e6,
                         is_anomalous=result.is_anomalous)
            if threshold is None and result.threshold is not None:
                threshold = result.threshold
            scoring = result.scoring
        else:
            msg = decode(raw, Image, connection.topic, warn)
            if msg is not None:
                try:
                    results.setdefault(stamp_ns(msg.header), {})['map'] = image_to_float(msg)
                except ConversionError as error:
                    warn(f'skipping an anomaly map on {connection.topic}: {error}')
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    (output / 'overlays').mkdir(exist_ok=True)
    matched = sorted(s for s in frames if 'score' in results.get(s, {}))
    missing = sorted(s for s in frames if s not in matched)
    latencies = np.array([results[s]['latency_ms'] for s in matched])
    summary = {'frames': len(frames), 'frames_with_result': len(matched),
               'frames_without_result': len(missing),
               'drop_rate': len(missing) / max(len(frames), 1),
               'latency_ms_p50': float(np.percentile(latencies, 50)) if matched else None,
               'latency_ms_p99': float(np.percentile(latencies, 99)) if matched else None,
               'latency_ms_max': float(latencies.max()) if matched else None,
               'scores': {str(s): results[s]['score'] for s in matched},
               'threshold': threshold, 'scoring': scoring, 'input_bag': str(input_bag),
               'results_bag': str(results_bag)}
    labelled = [s for s in matched if frames[s].get('gt') is not None
                and 'map' in results[s]]
    collected = {}
    if labelled:
        collected['bag'] = CategoryResults()
        for s in labelled:
            collected['bag'].add(int(frames[s]['gt'].any()), frames[s]['gt'], results[s]['map'],
                                 None, None, results[s]['score'])
    for i, s in enumerate(matched[j] for j in overlay_indices(len(matched), num_overlays)):
        frame, result = frames[s], results[s]
        if 'map' in result and 'xyz' in frame:
            write_overlay(output / 'overlays', f'frame_{i:03d}_{s}', frame['rgb'], frame['xyz'],
                          frame.get('gt'), result['map'], display_range(threshold, result['map']),
                          result['score'], threshold)
    document, table = write_evaluation(output, collected, summary, 'Detection metrics',
                                       scoring)
    report = ['# Rosbag replay evaluation', '', f'- input bag: `{input_bag}`',
              f'- results bag: `{results_bag}`', '',
              '| frames | with result | without result | latency p50 ms | latency p99 ms |',
              '|---|---|---|---|---|',
              f'| {summary["frames"]} | {summary["frames_with_result"]} | '
              f'{summary["frames_without_result"]} | {_fmt(summary["latency_ms_p50"])} | '
              f'{_fmt(summary["latency_ms_p99"])} |', '']
    if table:
        report.append(table)
    else:
        report.append('The input bag has no ground truth: scores, latency and drops only.')
    (output / 'report.md').write_text('\n'.join(report) + '\n')
    return document


def _fmt(value):
    return '-' if value is None else f'{value:.1f}'


def print_summary(document: dict, output: Path) -> None:
    mean = document.get('mean', {})

    def fmt(value, digits=3):
        return '-' if value is None else f'{value:.{digits}f}'
    print('| frames | I-AUROC | P-AUROC | AUPRO@0.3 | latency p50 ms | latency p99 ms | '
          'frames without result |')
    print('|---|---|---|---|---|---|---|')
    print(f'| {document["frames"]} | {fmt(mean.get("i_auroc"))} | {fmt(mean.get("p_auroc"))} '
          f'| {fmt(mean.get("aupro@0.3"))} | {fmt(document["latency_ms_p50"], 1)} | '
          f'{fmt(document["latency_ms_p99"], 1)} | {document["frames_without_result"]} |')
    print(f'report: {output / "report.md"}\noverlays: {output / "overlays"}')
