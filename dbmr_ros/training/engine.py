"""One epoch of each training stage.

Stage 1, reconstruction: DBMRNet learns masked reconstruction of good samples, some of them
corrupted by synthetic anomalies; the targets are always the clean sample, so the network
learns what a good part has where a defect is (the paper's 2D, 3D and cross-modal losses).
Stage 2, scoring head: the network is frozen; on freshly corrupted samples the head reads the
input, its reconstruction and the paper's maps, and learns the anomaly masks (focal loss).

Every step runs on the model's device; random numbers come from the CPU generator (see
`dbmr_ros.data.anomalies`), so a seed gives the same run on any device. A step's parts are
marked for the profiler (`record_function`; `benchmarks/bench_train.py --profile` prints them).
"""
import math
import time
from typing import Dict, NamedTuple, Optional

import torch
from torch.profiler import record_function
from tqdm import tqdm

from dbmr_ros.data.anomalies import AnomalyConfig, synthesize
from dbmr_ros.model.dbmrnet import DBMRNet
from dbmr_ros.model.head import focal_loss
from dbmr_ros.model.inputs import clean_targets, Groups, group_points, ModelInput, prepare, \
    Targets
from dbmr_ros.model.scoring import head_features, shape_prior_map
from dbmr_ros.training.shape_prior import PriorMaps


class TrainBatch(NamedTuple):
    inp: ModelInput     # the (possibly corrupted) network input
    groups: Groups
    targets: Targets    # the clean sample
    mask: torch.Tensor  # (B, S, S) bool, synthetic anomalies
    kind: torch.Tensor  # (B,) long, each sample's kind of anomaly (`anomalies.KIND_NAMES`)
    pose: tuple         # (quarter turns, flipped) of the whole batch's augmentation


def augment(rgb: torch.Tensor, xyz: torch.Tensor, generator: torch.Generator,
            brightness_jitter: float = 0.0):
    """The same random flip / 90-degree rotation of the registered grids (points unchanged), and
    a random brightness factor per image in [1 - jitter, 1 + jitter] (lighting changes).
    Returns rgb, xyz and the pose (quarter turns, flipped)."""
    k, flip = torch.randint(0, 4, (2,), generator=generator).tolist()
    rgb, xyz = torch.rot90(rgb, k, (1, 2)), torch.rot90(xyz, k, (1, 2))
    if flip % 2:
        rgb, xyz = rgb.flip(2), xyz.flip(2)
    if brightness_jitter > 0:
        factor = 1 + brightness_jitter * (2 * torch.rand(len(rgb), 1, 1, 1,
                                                         generator=generator) - 1)
        rgb = (rgb.float() * factor.to(rgb.device)).round().clamp(0, 255).to(torch.uint8)
    return rgb.contiguous(), xyz.contiguous(), (k, flip % 2)


def make_batch(rgb: torch.Tensor, xyz: torch.Tensor, model_cfg, anomalies: AnomalyConfig,
               generator: torch.Generator, augmentation: bool, brightness_jitter: float,
               device) -> TrainBatch:
    """Model-size good samples (B, S, S, 3) -> augmented, corrupted, grouped, with targets."""
    rgb, xyz = rgb.to(device), xyz.to(device)
    pose = (0, 0)
    with record_function('synthesis'):
        if augmentation:
            rgb, xyz, pose = augment(rgb, xyz, generator, brightness_jitter)
        corrupted = synthesize(rgb, xyz, anomalies, generator)
    with record_function('grouping'):
        inp = prepare(corrupted.rgb, corrupted.xyz, model_cfg.num_points, model_cfg.group_size,
                      generator=generator)
        groups = group_points(inp, model_cfg.num_groups, model_cfg.group_size)
        targets = clean_targets(inp, groups, rgb, xyz)
    return TrainBatch(inp, groups, targets, corrupted.mask, corrupted.kind, pose)


class EpochRunner:
    """The batches of one epoch with a progress bar, loss totals and images per second."""

    SHOW_EVERY = 10  # batches between progress updates (an update reads the loss back)

    def __init__(self, batches, description: str, enabled: bool):
        self.progress = tqdm(batches, desc=description, disable=not enabled, leave=False,
                             unit='batch')
        self.enabled = enabled
        self.totals: Dict[str, torch.Tensor] = {}  # on the device: no read-back per step
        self.count = 0
        self.steps = 0
        self.started = time.perf_counter()

    def __iter__(self):
        return iter(self.progress)

    def record(self, losses: Dict[str, torch.Tensor], size: int) -> None:
        for key, value in losses.items():
            self.totals[key] = self.totals.get(key, 0.0) + value.detach().float() * size
        self.count += size
        self.steps += 1
        if self.enabled and self.steps % self.SHOW_EVERY == 0:
            speed = self.count / (time.perf_counter() - self.started)
            self.progress.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}",
                                      img_s=f'{speed:.1f}')

    def means(self) -> Dict[str, float]:
        means = {k: float(v) / max(self.count, 1) for k, v in self.totals.items()}
        means['images_per_second'] = self.count / (time.perf_counter() - self.started)
        return means


def autocast(cfg, device):
    """bf16 autocast of a forward pass where the config asks for it and the device is CUDA
    (bf16 keeps float32's range: no loss scaling); float32 elsewhere."""
    enabled = cfg.mixed_precision and torch.device(device).type == 'cuda'
    return torch.autocast('cuda', dtype=torch.bfloat16, enabled=enabled)


# Stage 1's steps that see every token, so the network learns the unmasked repairing pass that
# inference runs; the others are masked as the paper trains.
UNMASKED_SHARE = 0.5


def unmasked_step(step: int, share: float = UNMASKED_SHARE) -> bool:
    """Whether optimizer step `step` sees every token: an evenly spaced `share` of the steps, a
    function of the step count only, so every DDP rank takes the same kind of step and a resumed
    run continues the schedule exactly."""
    return math.floor((step + 1) * share) > math.floor(step * share)


def reconstruction_epoch(net, model: DBMRNet, data, batches, optimizer, scheduler, cfg,
                         generator: torch.Generator, device, description: str,
                         progress: bool) -> Dict[str, float]:
    """Stage 1 over `batches` (index tensors into data = (rgb, xyz) tensors, on any device).
    net: the model or its DistributedDataParallel wrapper."""
    model.train()
    anomalies = cfg.anomaly_config()
    runner = EpochRunner(batches, description, progress)
    for index in runner:
        batch = make_batch(data[0][index], data[1][index], model.cfg, anomalies,
                           generator, cfg.augment, cfg.brightness_jitter, device)
        masked = not unmasked_step(scheduler.last_epoch)
        with autocast(cfg, device), record_function('forward'):
            out = net(batch.inp.images, batch.groups, generator, batch.targets, masked)
        optimizer.zero_grad(set_to_none=True)
        with record_function('backward'):
            out.loss.backward()
        optimizer_step(model.parameters(), optimizer, scheduler, cfg.grad_clip)
        runner.record({'loss': out.loss, **out.losses}, len(index))
    return runner.means()


def optimizer_step(parameters, optimizer, scheduler, grad_clip: float) -> None:
    """Clip the gradients' norm (0: off), step the optimizer and the schedule."""
    with record_function('optimizer'):
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
        optimizer.step()
        scheduler.step()


def head_epoch(head_net, model: DBMRNet, data, batches, optimizer, scheduler, cfg, stats: dict,
               generator: torch.Generator, device, description: str, progress: bool,
               prior_maps: Optional[PriorMaps] = None) -> Dict[str, float]:
    """Stage 2: the scoring head on synthetic anomalies, the network frozen.
    head_net: model.scoring_head or its DistributedDataParallel wrapper. prior_maps: the run's
    remembered shape-prior maps (the same maps, fewer computed); None computes each."""
    model.eval()
    model.scoring_head.train()
    anomalies = cfg.anomaly_config()
    runner = EpochRunner(batches, description, progress)
    for index in runner:
        batch = make_batch(data[0][index], data[1][index], model.cfg, anomalies,
                           generator, cfg.augment, cfg.brightness_jitter, device)
        with autocast(cfg, device):
            with torch.no_grad():
                with record_function('frozen network'):
                    tokens = model.score_tokens(batch.inp.images, batch.groups)
                # The prior sees each training part as it sees an unseen one (it leaves the
                # part's own entries out).
                with record_function('shape prior'):
                    shape_map = (shape_prior_map(model, batch.inp, parts=index)
                                 if prior_maps is None else
                                 prior_maps(batch.inp, index, batch.kind, batch.pose))
                with record_function('head inputs'):
                    features = head_features(model, batch.inp, batch.groups, tokens, stats,
                                             shape_map)
            with record_function('forward'):
                logits = head_net(features.inputs, features.context)
                loss = focal_loss(logits, batch.mask)
        optimizer.zero_grad(set_to_none=True)
        with record_function('backward'):
            loss.backward()
        optimizer_step(model.scoring_head.parameters(), optimizer, scheduler, cfg.grad_clip)
        runner.record({'loss': loss, 'focal': loss}, len(index))
    return runner.means()
