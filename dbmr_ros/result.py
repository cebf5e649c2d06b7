"""What a Detector call returns, and the steps around the network that shape it: the input
pair's checks, the maps taken back to the input's resolution, the stage times."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dbmr_ros.data.preprocess import PreprocessConfig, square_padding, to_input_size
from dbmr_ros.host_transfer import to_host
from dbmr_ros.model.scoring import AnomalyMaps


@dataclass
class AnomalyResult:
    """One frame's result; maps at the input's resolution."""

    score: float                  # image score of the scoring in use: max of `anomaly_map`
    anomaly_map: np.ndarray       # (H, W) float32 map of the scoring in use, input resolution
    is_anomalous: bool            # score > threshold (False when there is no threshold)
    map_2d: np.ndarray            # (H, W) float32 the paper's RGB-only map
    map_3d: np.ndarray            # (H, W) float32 the paper's geometry-only map
    paper_map: np.ndarray         # (H, W) float32 the paper's map (2D x 3D)
    paper_score: float            # its image score
    scoring: str = 'learned'      # which scoring `score` and `anomaly_map` come from
    threshold: Optional[float] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)


def check_pair(rgb: np.ndarray, xyz: np.ndarray) -> None:
    """ValueError unless rgb is (H, W, 3) uint8 and xyz (H, W, 3) float of the same size."""
    rgb, xyz = np.asarray(rgb), np.asarray(xyz)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f'rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}')
    if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
        raise ValueError(f'xyz must be (H, W, 3) float, got {xyz.shape} {xyz.dtype}')
    if rgb.shape[:2] != xyz.shape[:2]:
        raise ValueError(f'rgb {rgb.shape[:2]} and xyz {xyz.shape[:2]} sizes differ')


def input_resolution_maps(maps: AnomalyMaps, shapes, cfg: PreprocessConfig,
                          on_device: bool) -> List[np.ndarray]:
    """Each frame's (4, H, W) float32 maps at its input size (anomaly, 2D, 3D, paper): on the
    device, a batch of one input size in one resize and one copy back."""
    stacked = torch.stack([maps.anomaly_map, maps.map_2d, maps.map_3d, maps.paper_map], 1)
    if on_device and len(set(shapes)) == 1:
        return list(to_input_resolution(stacked, shapes[0], cfg, on_device))
    return [to_input_resolution(frame, shape, cfg, on_device)
            for frame, shape in zip(stacked, shapes)]


def to_input_resolution(model_maps: torch.Tensor, shape: Sequence[int], cfg: PreprocessConfig,
                        on_device: bool) -> np.ndarray:
    """(C, S, S) maps -> (C, H, W) float32 numpy (or (B, C, S, S) -> (B, C, H, W) on the
    device): undo the resize and the square padding (bilinear, the same half-pixel rule: torch
    on the maps' device where the Detector preprocesses there, else OpenCV)."""
    if not on_device:
        channels_last = np.ascontiguousarray(model_maps.permute(1, 2, 0).numpy())
        full = to_input_size(channels_last, shape, cfg)
        return np.ascontiguousarray(full.transpose(2, 0, 1))
    height, width = shape
    pads = square_padding(height, width) if cfg.pad_to_square else ((0, 0), (0, 0))
    (top, bottom), (left, right) = pads
    size = (height + top + bottom, width + left + right)
    batch = model_maps if model_maps.dim() == 4 else model_maps[None]
    full = F.interpolate(batch, size=size, mode='bilinear', align_corners=False)
    full = to_host(full[..., top:top + height, left:left + width])
    return full if model_maps.dim() == 4 else full[0]


# The parts of the model's time where it runs eagerly ('shape_prior' only for a model with a
# prior and the learned scoring; on CUDA it runs beside the network and its lap is ~0).
MODEL_PARTS = ('grouping', 'shape_prior', 'network', 'scoring')


def with_model_total(times: Dict[str, float]) -> Dict[str, float]:
    """Stage times with 'model' as the sum of its parts where the network ran eagerly."""
    parts = [times[stage] for stage in MODEL_PARTS if stage in times]
    return {**times, 'model': times.get('model', 0.0) + sum(parts)}
