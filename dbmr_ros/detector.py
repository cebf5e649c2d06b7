"""The Detector: raw RGB + organized point cloud arrays in, anomaly result out.

The single inference path of the package: the ROS node, the CLIs and the bag evaluation all call
it, so preprocessing and scoring exist once. No ROS, no framework types.
"""
import dataclasses
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from dbmr_ros.checkpoint import build_model, CheckpointMeta
from dbmr_ros.cuda_graphs import GraphedFunction
from dbmr_ros.data import preprocess_torch
from dbmr_ros.data.preprocess import (clean_point_cloud, preprocess, square_padding,
                                      to_input_size)
from dbmr_ros.model.dbmrnet import DBMRNet
from dbmr_ros.model.inputs import group_points, prepare, require_points
from dbmr_ros.model.scoring import anomaly_maps, AnomalyMaps, raw_maps, SCORINGS


@dataclass
class AnomalyResult:
    score: float                  # image score of the scoring in use: max of `anomaly_map`
    anomaly_map: np.ndarray       # (H, W) float32 map of the scoring in use, input resolution
    is_anomalous: bool            # score > threshold (False when there is no threshold)
    map_2d: np.ndarray            # (H, W) float32 the paper's RGB-only map
    map_3d: np.ndarray            # (H, W) float32 the paper's geometry-only map
    paper_map: np.ndarray         # (H, W) float32 the paper's fused map
    paper_score: float            # its image score
    scoring: str = 'learned'      # which scoring `score` and `anomaly_map` come from
    threshold: Optional[float] = None
    timings_ms: Dict[str, float] = field(default_factory=dict)


def resolve_device(device: str = 'auto') -> torch.device:
    if device == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    if device.startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} requested but CUDA is not available')
    return torch.device(device)


class Detector:
    """Scores registered (rgb, xyz) pairs with a trained DBMRNet.

    rgb: (H, W, 3) uint8; xyz: (H, W, 3) float32 in metres, invalid pixels 0 or NaN. Any
    resolution; a list (or a 4-D array) of pairs is scored as one batch.

    `scoring` picks the map and image score the result carries: 'learned' (the scoring head)
    or 'paper' (the DBMRNet paper's); None takes the checkpoint's. The other one's fused map
    and score come along for evaluation. The threshold is the checkpoint's for that scoring,
    refused (CalibrationError) when it was fitted for another score definition.

    `preprocessing`: 'numpy' (OpenCV / SciPy on the CPU), 'torch' (the same steps on the
    model's device, `preprocess_torch`) or 'auto': torch on CUDA, numpy on the CPU, where it is
    the faster of the two. Frames given with `cleaned_xyz` (a cache) take the numpy resize.

    `cuda_graphs` (CUDA only): grouping, network and scoring are recorded as a CUDA graph at
    the first call of each batch size and replayed after (`dbmr_ros.cuda_graphs`); the same maps
    as eager execution, which is the fallback should recording fail. The graph holds the
    scoring and calibration it was recorded with: another calibration is another Detector
    (`with_calibration`).

    On the CPU, load and call it from one thread (as the node does): torch on a second thread
    that also runs parallel ops makes libgomp stop spin-waiting, and small ops get ~2x slower.
    """

    def __init__(self, model: DBMRNet, meta: CheckpointMeta, device='cpu',
                 mixed_precision: bool = True, scoring: Optional[str] = None,
                 preprocessing: str = 'auto', cuda_graphs: bool = True):
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = torch.device(device)
        self.scoring = scoring or meta.model.scoring
        if self.scoring not in SCORINGS:
            raise ValueError(f'scoring must be one of {SCORINGS}, got {self.scoring!r}')
        self.calibrated_threshold = meta.calibration.threshold_for(meta.model, self.scoring)
        self.threshold = self.calibrated_threshold  # the node may set its own at run time
        # bf16 autocast on CUDA only; CPU stays float32 (see README for the tolerance).
        self.mixed_precision = mixed_precision and self.device.type == 'cuda'
        if preprocessing not in ('auto', 'numpy', 'torch'):
            raise ValueError(f"preprocessing must be 'auto', 'numpy' or 'torch', got "
                             f'{preprocessing!r}')
        self.preprocessing = preprocessing
        self.preprocess_on_device = (preprocessing == 'torch' or (
            preprocessing == 'auto' and self.device.type == 'cuda'))
        self._pool: Optional[ThreadPoolExecutor] = None  # made at the first numpy batch
        # On CUDA, grouping + network + scoring replay as one graph per batch size.
        self.cuda_graphs = cuda_graphs
        self._graphed = (GraphedFunction(self._model_maps, 'the Detector\'s network')
                         if cuda_graphs and self.device.type == 'cuda' else None)

    @classmethod
    def from_checkpoint(cls, path, device: str = 'auto', mixed_precision: bool = True,
                        scoring: Optional[str] = None, preprocessing: str = 'auto',
                        cuda_graphs: bool = True):
        target = resolve_device(device)
        model, meta = build_model(path, target)
        return cls(model, meta, target, mixed_precision, scoring, preprocessing, cuda_graphs)

    def with_calibration(self, calibration, scoring: Optional[str] = None) -> 'Detector':
        """A Detector on the same network with another calibration (and scoring)."""
        return Detector(self.model, dataclasses.replace(self.meta, calibration=calibration),
                        self.device, self.mixed_precision, scoring or self.scoring,
                        self.preprocessing, self.cuda_graphs)

    def warm_up(self) -> bool:
        """One inference on a synthetic frame, so that the first real frame's latency is not the
        allocator's and the kernels' start-up cost. False when this preprocessing config
        rejects the synthetic frame (nothing was warmed up)."""
        from dbmr_ros.data.synthetic import render_sample
        sample = render_sample(np.random.default_rng(0), 'puck', self.image_size)
        try:
            self(sample.rgb, sample.xyz)
        except ValueError:
            return False
        return True

    @property
    def image_size(self) -> int:
        return self.meta.preprocess.image_size

    # --- public API ----------------------------------------------------------------------

    def __call__(self, rgb, xyz, cleaned_xyz=None) -> Union[AnomalyResult, List[AnomalyResult]]:
        batched = isinstance(rgb, (list, tuple)) or np.ndim(rgb) == 4
        rgbs = list(rgb) if batched else [rgb]
        xyzs = list(xyz) if batched else [xyz]
        cleaned = list(cleaned_xyz) if batched and cleaned_xyz is not None else (
            [cleaned_xyz] * len(rgbs))
        if len(rgbs) != len(xyzs):
            raise ValueError(f'{len(rgbs)} images but {len(xyzs)} point clouds')
        for image, cloud in zip(rgbs, xyzs):
            self._check(image, cloud)
        clock = self._clock()
        prepared = self._preprocess_all(rgbs, xyzs, cleaned)
        stack = torch.stack if self.preprocess_on_device else np.stack
        rgb_s, xyz_s = stack([p[0] for p in prepared]), stack([p[1] for p in prepared])
        timings = {'preprocess': clock()}
        maps = self.score_prepared(rgb_s, xyz_s, timings=timings,
                                   on_device=self.preprocess_on_device)
        full = self._input_resolution_maps(maps, [image.shape[:2] for image in rgbs])
        scores, paper_scores = maps.score.tolist(), maps.paper_score.tolist()  # one read-back
        results = [self._result(scores[i], paper_scores[i], full[i], timings)
                   for i in range(len(rgbs))]
        return results if batched else results[0]

    def _preprocess_all(self, rgbs, xyzs, cleaned) -> list:
        """Every pair of a call. The numpy path preprocesses a batch's frames on parallel
        threads (NumPy, SciPy and OpenCV release the GIL in their heavy work, and none of it is
        torch); the torch path queues its kernels from this thread."""
        jobs = list(zip(rgbs, xyzs, cleaned))
        if self.preprocess_on_device or len(jobs) == 1:
            return [self._preprocess(*job) for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(os.cpu_count() or 1, 'dbmr-preprocess')
        return list(self._pool.map(lambda job: self._preprocess(*job), jobs))

    def _preprocess(self, rgb: np.ndarray, xyz: np.ndarray, cleaned_xyz=None):
        """One raw pair -> model-size arrays (numpy), or tensors on the device."""
        if not self.preprocess_on_device:
            return preprocess(rgb, xyz, self.meta.preprocess, cleaned_xyz)
        if cleaned_xyz is not None:  # cached: only the resize is left
            return tuple(torch.from_numpy(a).to(self.device) for a in preprocess(
                rgb, xyz, self.meta.preprocess, cleaned_xyz))
        return preprocess_torch.preprocess(
            torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device),
            torch.from_numpy(np.ascontiguousarray(xyz)).to(self.device), self.meta.preprocess)

    def clean(self, xyz: np.ndarray) -> np.ndarray:
        """The background removal step alone (cacheable by callers)."""
        return clean_point_cloud(xyz, self.meta.preprocess)

    @torch.inference_mode()
    def score_prepared(self, rgb_s, xyz_s, timings: Optional[dict] = None,
                       on_device: bool = False) -> AnomalyMaps:
        """Model-size arrays or tensors (B, S, S, 3) -> AnomalyMaps (model size, float32, on
        the CPU or, with `on_device`, on the model's device).

        timings gets 'model' (grouping, network and scoring, ms) and, when run eagerly, its
        parts 'grouping', 'network' and 'scoring'; a replayed graph has no parts."""
        timings = {} if timings is None else timings
        clock = self._clock()
        rgb_t, xyz_t = self._on_device(rgb_s, xyz_s)
        if self._graphed is not None and self._graphed.usable:
            require_points(xyz_t, self.model.cfg.group_size)  # the graph cannot raise
            maps = self._graphed(rgb_t, xyz_t)
        else:
            def lap(stage):
                timings[stage] = clock()
            maps = self._model_maps(rgb_t, xyz_t, lap)
        # A copy either way: the graph overwrites its outputs at the next replay.
        maps = AnomalyMaps(*(m.to(torch.float32, copy=True) if on_device else m.float().cpu()
                             for m in maps))
        timings['model'] = clock() + sum(timings.get(stage, 0.0)
                                         for stage in ('grouping', 'network', 'scoring'))
        return maps

    def _model_maps(self, rgb_t: torch.Tensor, xyz_t: torch.Tensor,
                    lap: Callable[[str], None] = lambda stage: None) -> AnomalyMaps:
        """Model-size tensors (B, S, S, 3) on the device -> AnomalyMaps on the device: grouping,
        network and scoring, with nothing read back (so a CUDA graph can record it; the caller
        checks the point counts). lap(stage) is called after each of the three."""
        inp, groups = self._network_input(rgb_t, xyz_t)
        lap('grouping')
        # No autocast cache: a cast weight freed when the context exits would be a dangling
        # buffer in a recorded graph.
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=self.mixed_precision,
                            cache_enabled=False):
            tokens = self.model.score_tokens(inp.images, groups)
            lap('network')
            maps = anomaly_maps(self.model, inp, groups, tokens, self.meta.calibration.stats,
                                self.scoring)
        lap('scoring')
        return maps

    @torch.inference_mode()
    def raw_maps_prepared(self, rgb_s: np.ndarray, xyz_s: np.ndarray):
        """Model-size arrays -> the paper's unnormalised 2D and 3D maps (B, S, S), CPU tensors
        (what the normalisation statistics are fitted on)."""
        inp, groups = self._network_input(*self._on_device(rgb_s, xyz_s))
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=self.mixed_precision):
            tokens = self.model.score_tokens(inp.images, groups)
            maps = raw_maps(tokens, inp, groups, self.model.cfg.score_2d)
        return tuple(m.float().cpu() for m in maps)

    def _on_device(self, rgb_s, xyz_s):
        """Model-size arrays or tensors -> tensors on the model's device."""
        return torch.as_tensor(rgb_s).to(self.device), torch.as_tensor(xyz_s).to(self.device)

    def _network_input(self, rgb_t: torch.Tensor, xyz_t: torch.Tensor):
        cfg = self.model.cfg
        inp = prepare(rgb_t, xyz_t, cfg.num_points, cfg.group_size)
        return inp, group_points(inp, cfg.num_groups, cfg.group_size)

    # --- helpers -------------------------------------------------------------------------

    def _clock(self):
        last = [time.perf_counter()]

        def lap():
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            elapsed, last[0] = (now - last[0]) * 1e3, now
            return elapsed
        return lap

    @staticmethod
    def _check(rgb: np.ndarray, xyz: np.ndarray) -> None:
        rgb, xyz = np.asarray(rgb), np.asarray(xyz)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f'rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}')
        if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
            raise ValueError(f'xyz must be (H, W, 3) float, got {xyz.shape} {xyz.dtype}')
        if rgb.shape[:2] != xyz.shape[:2]:
            raise ValueError(f'rgb {rgb.shape[:2]} and xyz {xyz.shape[:2]} sizes differ')

    def _input_resolution_maps(self, maps: AnomalyMaps, shapes) -> list:
        """Each frame's (4, H, W) float32 maps at its input size (anomaly, 2D, 3D, paper): on
        the device, a batch of one input size in one resize and one copy back."""
        stacked = torch.stack([maps.anomaly, maps.map_2d, maps.map_3d, maps.paper], 1)
        if self.preprocess_on_device and len(set(shapes)) == 1:
            return list(self.to_input_resolution(stacked, shapes[0]))
        return [self.to_input_resolution(frame, shape) for frame, shape in zip(stacked, shapes)]

    def to_input_resolution(self, model_maps: torch.Tensor, shape: Sequence[int]) -> np.ndarray:
        """(C, S, S) maps -> (C, H, W) float32 numpy (or (B, C, S, S) -> (B, C, H, W) on the
        device): undo the resize and the square padding (bilinear, the same half-pixel rule:
        torch on the model's device when the Detector preprocesses there, else OpenCV)."""
        if not self.preprocess_on_device:
            channels_last = np.ascontiguousarray(model_maps.permute(1, 2, 0).numpy())
            full = to_input_size(channels_last, shape, self.meta.preprocess)
            return np.ascontiguousarray(full.transpose(2, 0, 1))
        height, width = shape
        pads = ((0, 0), (0, 0))
        if self.meta.preprocess.pad_to_square:
            pads = square_padding(height, width)
        (top, bottom), (left, right) = pads
        size = (height + top + bottom, width + left + right)
        batch = model_maps if model_maps.dim() == 4 else model_maps[None]
        full = F.interpolate(batch, size=size, mode='bilinear', align_corners=False)
        full = full[..., top:top + height, left:left + width].cpu().numpy()
        return full if model_maps.dim() == 4 else full[0]

    def _result(self, score: float, paper_score: float, full_maps: np.ndarray,
                timings) -> AnomalyResult:
        anomaly, map_2d, map_3d, paper = full_maps
        threshold = self.threshold
        return AnomalyResult(score=score, anomaly_map=anomaly,
                             is_anomalous=threshold is not None and score > threshold,
                             map_2d=map_2d, map_3d=map_3d, paper_map=paper,
                             paper_score=paper_score, scoring=self.scoring,
                             threshold=threshold, timings_ms=dict(timings))
