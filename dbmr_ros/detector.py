"""The Detector: raw RGB + organized point cloud arrays in, anomaly result out.

The single inference path of the package: the ROS node, the CLIs and the bag evaluation all call
it, so preprocessing and scoring exist once. No ROS, no framework types.
"""
import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Union

import numpy as np
import torch

from dbmr_ros.checkpoint import build_model, CheckpointMeta
from dbmr_ros.cuda_graphs import GraphedFunction, run_beside
from dbmr_ros.data import preprocess_batched
from dbmr_ros.data.preprocess import clean_point_cloud, preprocess
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.devices import resolve_device
from dbmr_ros.host_transfer import stack_on_device
from dbmr_ros.model.dbmrnet import DBMRNet
from dbmr_ros.model.inputs import group_points, prepare, require_counts, require_points
from dbmr_ros.model.scoring import (anomaly_maps, AnomalyMaps, raw_maps, SCORINGS,
                                    shape_prior_map)
from dbmr_ros.result import (AnomalyResult, check_pair, input_resolution_maps,
                             with_model_total)
from dbmr_ros.stopwatch import Stopwatch


class Detector:
    """Scores registered (rgb, xyz) pairs with a trained DBMRNet.

    rgb: (H, W, 3) uint8; xyz: (H, W, 3) float32 in metres, invalid pixels 0 or NaN. Any
    resolution; a list (or a 4-D array) of pairs is scored as one batch.

    `scoring` picks the map and image score the result carries: 'learned' (the scoring head)
    or 'paper' (the DBMRNet paper's); None takes the checkpoint's. The other one's map
    and score come along for evaluation. The threshold is the checkpoint's for that scoring,
    refused (CalibrationError) when it was fitted for another score definition.

    `preprocessing`: 'numpy' (`data.preprocess`: OpenCV / SciPy on the CPU, the reference) or
    'torch' (on the model's device: a call's frames of one size in fixed shapes,
    `preprocess_batched`, replayed as a CUDA graph; the frames it flags as beyond its bounds,
    frames of several sizes in one call and frames given with `cleaned_xyz`, a cache, take the
    reference) or 'auto': torch on CUDA, numpy on the CPU, where it is about ten times faster
    than the fixed shapes ('torch' on the CPU runs the GPU's code, for checking it).

    `cuda_graphs` (CUDA only): the preprocessing, and grouping, network and scoring, are
    recorded as two CUDA graphs at the first call of each batch size and replayed after
    (`dbmr_ros.cuda_graphs`); the same maps as eager execution, which is the fallback should
    recording fail. The network's graph holds the scoring and calibration it was recorded
    with: another calibration is another Detector (`with_calibration`).

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
        # bf16 autocast on CUDA only; CPU stays float32 (the tolerance: docs/design_notes.md).
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
        # A batch of one frame size preprocesses in fixed shapes: one more graph per batch size.
        self._preprocess_batch = (GraphedFunction(self._preprocess_fixed, 'the preprocessing')
                                  if cuda_graphs and self.device.type == 'cuda'
                                  else self._preprocess_fixed)

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
            check_pair(image, cloud)
        watch = Stopwatch(self.device)
        if (self.preprocess_on_device and cleaned_xyz is None
                and len({image.shape for image in rgbs}) == 1):
            maps = self._score_on_device(rgbs, xyzs, watch)
        else:
            prepared = self._preprocess_all(rgbs, xyzs, cleaned)
            rgb_s, xyz_s = np.stack([p[0] for p in prepared]), np.stack([p[1] for p in prepared])
            watch.lap('preprocess')
            maps = self._score_checked(rgb_s, xyz_s, watch, self.preprocess_on_device)
        full = input_resolution_maps(maps, [image.shape[:2] for image in rgbs],
                                     self.meta.preprocess, self.preprocess_on_device)
        scores, paper_scores = maps.score.tolist(), maps.paper_score.tolist()  # one read-back
        timings = with_model_total(watch.times_ms())
        results = [self._result(scores[i], paper_scores[i], full[i], timings)
                   for i in range(len(rgbs))]
        return results if batched else results[0]

    def _score_on_device(self, rgbs, xyzs, watch: Stopwatch) -> AnomalyMaps:
        """Frames of one size -> AnomalyMaps on the device: preprocessed in fixed shapes
        (`preprocess_batched`) and scored, both replayed as CUDA graphs on a GPU, before anything
        is read back, so the host launches the network while the GPU still preprocesses. Then
        one read-back of the preprocessing's flags and point counts: a cloud with too few points
        is refused as `require_points` does (the network saw a stand-in for it), and frames
        flagged as not exact are redone by the numpy reference and the batch scored again."""
        rgb_t, xyz_t = (stack_on_device(frames, dtype, self.device) for frames, dtype in (
            (rgbs, np.uint8), (xyzs, np.float32)))
        rgb_s, xyz_s, exact, counts = self._preprocess_batch(rgb_t, xyz_t)
        watch.lap('preprocess')
        maps = self._score(rgb_s, xyz_s, watch, on_device=True)
        exact, counts = exact.tolist(), counts.tolist()
        # The exact frames' counts are final; the others are redone and checked below.
        final = [count for count, flag in zip(counts, exact) if flag]
        if final:
            require_counts(final, self.model.cfg.group_size)
        if all(exact):
            return maps
        # Copies: a replayed graph overwrites its outputs at the next replay.
        rgb_s, xyz_s = rgb_s.clone(), xyz_s.clone()
        for i in (i for i, flag in enumerate(exact) if not flag):
            rgb_s[i], xyz_s[i] = (torch.from_numpy(a).to(self.device) for a in preprocess(
                rgbs[i], xyzs[i], self.meta.preprocess))
        watch.lap('preprocess')
        return self._score_checked(rgb_s, xyz_s, watch, on_device=True)

    def _preprocess_fixed(self, rgb_t: torch.Tensor, xyz_t: torch.Tensor):
        """Raw (B, H, W, 3) tensors on the device -> model-size rgb and xyz, (B,) exact flags
        and (B,) valid point counts, with nothing read back (a CUDA graph records it). A cloud
        left with fewer points than a group is replaced by a stand-in (every pixel valid), so
        the network's graph, which replays before the counts are read, never sees it."""
        rgb_s, xyz_s, exact = preprocess_batched.preprocess_batch(rgb_t, xyz_t,
                                                                  self.meta.preprocess)
        counts = valid_mask(xyz_s).flatten(1).sum(1)
        enough = (counts >= self.model.cfg.group_size)[:, None, None, None]
        stand_in = _stand_in_cloud(xyz_s.shape[1], xyz_s.dtype, xyz_s.device)
        return rgb_s, torch.where(enough, xyz_s, stand_in), exact, counts

    def _preprocess_all(self, rgbs, xyzs, cleaned) -> list:
        """Every pair of a call by the numpy reference -> model-size arrays, a batch's frames on
        parallel threads (NumPy, SciPy and OpenCV release the GIL in their heavy work, and none
        of it is torch)."""
        jobs = [(rgb, xyz, self.meta.preprocess, clean)
                for rgb, xyz, clean in zip(rgbs, xyzs, cleaned)]
        if len(jobs) == 1:
            return [preprocess(*jobs[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(os.cpu_count() or 1, 'dbmr-preprocess')
        return list(self._pool.map(lambda job: preprocess(*job), jobs))

    def clean(self, xyz: np.ndarray) -> np.ndarray:
        """The background removal step alone (cacheable by callers)."""
        return clean_point_cloud(xyz, self.meta.preprocess)

    @torch.inference_mode()
    def score_prepared(self, rgb_s, xyz_s, timings: Optional[dict] = None,
                       on_device: bool = False) -> AnomalyMaps:
        """Model-size arrays or tensors (B, S, S, 3) -> AnomalyMaps (model size, float32, on
        the CPU or, with `on_device`, on the model's device).

        timings gets 'model' (ms) and, when run eagerly, its parts (`MODEL_PARTS`); a
        replayed graph has no parts."""
        watch = Stopwatch(self.device)
        maps = self._score_checked(rgb_s, xyz_s, watch, on_device)
        if timings is not None:
            timings.update(with_model_total(watch.times_ms()))
        return maps

    def _score_checked(self, rgb_s, xyz_s, watch: Stopwatch, on_device: bool) -> AnomalyMaps:
        """`_score` after `require_points` (one read-back: the graph cannot raise)."""
        rgb_t, xyz_t = self._on_device(rgb_s, xyz_s)
        require_points(xyz_t, self.model.cfg.group_size)
        return self._score(rgb_t, xyz_t, watch, on_device)

    def _score(self, rgb_t: torch.Tensor, xyz_t: torch.Tensor, watch: Stopwatch,
               on_device: bool) -> AnomalyMaps:
        """Model-size tensors on the device, every cloud with enough points -> AnomalyMaps (on
        the device or the CPU); laps 'model', or its parts where it runs eagerly."""
        if self._graphed is not None and self._graphed.usable:
            maps = self._graphed(rgb_t, xyz_t)
            lap = 'model'
        else:
            maps = self._model_maps(rgb_t, xyz_t, watch.lap)
            lap = 'scoring'  # the copy below
        # A copy either way: the graph overwrites its outputs at the next replay.
        maps = AnomalyMaps(*(m.to(torch.float32, copy=True) if on_device else m.float().cpu()
                             for m in maps))
        watch.lap(lap)
        return maps

    def _model_maps(self, rgb_t: torch.Tensor, xyz_t: torch.Tensor,
                    lap: Callable[[str], None] = lambda stage: None) -> AnomalyMaps:
        """Model-size tensors (B, S, S, 3) on the device -> AnomalyMaps on the device: grouping,
        network and scoring, with nothing read back (so a CUDA graph can record it; the caller
        checks the point counts). lap(stage) is called after each part (`MODEL_PARTS`)."""
        inp, groups = self._network_input(rgb_t, xyz_t)
        lap('grouping')
        # No autocast cache: a cast weight freed when the context exits would be a dangling
        # buffer in a recorded graph.
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=self.mixed_precision,
                            cache_enabled=False):
            # The shape prior reads the cloud alone: on CUDA its ~300 small kernels run on a
            # side stream beside the network's, which at small batches leave the GPU idle.
            shape_map, join = (run_beside(self.device, shape_prior_map, self.model, inp)
                               if self.scoring == 'learned' else (None, lambda: None))
            if shape_map is not None:
                lap('shape_prior')
            tokens = self.model.score_tokens(inp.images, groups)
            lap('network')
            join()
            maps = anomaly_maps(self.model, inp, groups, tokens, self.meta.calibration.stats,
                                self.scoring, shape_map)
        lap('scoring')
        return maps

    @torch.inference_mode()
    def raw_maps_prepared(self, rgb_s: np.ndarray, xyz_s: np.ndarray):
        """Model-size arrays -> the paper's unnormalised 2D and 3D maps (B, S, S), CPU tensors
        (what the normalisation statistics are fitted on)."""
        inp, groups = self._network_input(*self._on_device(rgb_s, xyz_s))
        with torch.autocast('cuda', dtype=torch.bfloat16, enabled=self.mixed_precision):
            tokens = self.model.score_tokens(inp.images, groups)
            maps = raw_maps(tokens, inp, groups)
        return tuple(m.float().cpu() for m in maps)

    def _on_device(self, rgb_s, xyz_s):
        """Model-size arrays or tensors -> tensors on the model's device."""
        return torch.as_tensor(rgb_s).to(self.device), torch.as_tensor(xyz_s).to(self.device)

    def _network_input(self, rgb_t: torch.Tensor, xyz_t: torch.Tensor):
        cfg = self.model.cfg
        inp = prepare(rgb_t, xyz_t, cfg.num_points, cfg.group_size)
        return inp, group_points(inp, cfg.num_groups, cfg.group_size)

    def _result(self, score: float, paper_score: float, full_maps: np.ndarray,
                timings) -> AnomalyResult:
        anomaly, map_2d, map_3d, paper = full_maps
        threshold = self.threshold
        return AnomalyResult(score=score, anomaly_map=anomaly,
                             is_anomalous=threshold is not None and score > threshold,
                             map_2d=map_2d, map_3d=map_3d, paper_map=paper,
                             paper_score=paper_score, scoring=self.scoring,
                             threshold=threshold, timings_ms=dict(timings))


@functools.lru_cache(maxsize=4)
def _stand_in_cloud(size: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(S, S, 3): a plane one metre away with every pixel valid, built once per size (at a CUDA
    graph's warm-up run, so the recording only reads it)."""
    steps = torch.arange(size, device=device, dtype=dtype) / size
    return torch.stack([steps[None, :].expand(size, size), steps[:, None].expand(size, size),
                        torch.ones(size, size, device=device, dtype=dtype)], -1)
