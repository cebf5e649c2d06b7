"""The node's `~/result` message, written here and read here only.

A std_msgs/Float32 score has no header, so each frame's result is a DiagnosticArray with the
input's header: bag evaluation, benchmarks and tests match it to its input by stamp. The score
and threshold are written with repr(), so they read back bit-exact.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from dbmr_ros.ros.conversions import stamp_ns


@dataclass
class FrameResult:
    """One decoded `~/result`."""
    stamp_ns: int
    score: float
    is_anomalous: bool
    scoring: str
    threshold: Optional[float]
    timings_ms: Dict[str, float] = field(default_factory=dict)  # 'processing', 'network', ...


def encode(node_name: str, header, result, threshold: Optional[float],
           processing_ms: float) -> DiagnosticArray:
    """An AnomalyResult (detector.py) of the frame with this header -> the message."""
    status = DiagnosticStatus(name=node_name, hardware_id=header.frame_id,
                              level=DiagnosticStatus.WARN if result.is_anomalous
                              else DiagnosticStatus.OK,
                              message='anomalous' if result.is_anomalous else 'good')
    values = {'score': repr(float(result.score)), 'scoring': result.scoring,
              'is_anomalous': str(bool(result.is_anomalous)).lower(),
              'threshold': repr(None if threshold is None else float(threshold)),
              'processing_ms': f'{processing_ms:.2f}',
              **{f'{step}_ms': f'{ms:.2f}' for step, ms in result.timings_ms.items()}}
    status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
    return DiagnosticArray(header=header, status=[status])


def decode(msg: DiagnosticArray) -> Optional[FrameResult]:
    """The message -> FrameResult; None for a message without a status or score."""
    if not msg.status:
        return None
    values = {kv.key: kv.value for kv in msg.status[0].values}
    if 'score' not in values:
        return None
    threshold = values.get('threshold')
    return FrameResult(
        stamp_ns=stamp_ns(msg.header), score=float(values['score']),
        is_anomalous=values.get('is_anomalous') == 'true',
        scoring=values.get('scoring', 'learned'),
        threshold=None if threshold in (None, 'None') else float(threshold),
        timings_ms={k[:-3]: float(v) for k, v in values.items() if k.endswith('_ms')})
