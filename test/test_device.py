"""Training never assumes the CPU: every tensor stays on the data's device and every random
number comes from the run's (CPU) generator, moved to the device afterwards.

A CUDA-only bug (a CPU generator asked for CUDA numbers, a tensor made on the CPU and mixed
with CUDA ones) is caught here without a GPU: random calls are audited during a real training
step, and the synthesis, augmentation and masking run on the `meta` device, which refuses to
mix with CPU tensors exactly as CUDA does. Where a GPU is present, a real CUDA step runs too.
"""
import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from dbmr_ros.data.anomalies import AnomalyConfig, synthesize
from dbmr_ros.model import DBMRConfig, DBMRNet
from dbmr_ros.model.head import focal_loss
from dbmr_ros.model.masking import random_masking
from dbmr_ros.model.scoring import head_features
from dbmr_ros.training.engine import augment, make_batch
from parts import model_size_parts

SMALL = DBMRConfig(image_size=64, patch_size=8, num_points=400, num_groups=24, group_size=12,
                   embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2,
                   head_widths=(8, 16), shape_prior_components=4)
RANDOM_FUNCTIONS = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.rand_like,
                    torch.randn_like, torch.randint_like, torch.normal, torch.bernoulli,
                    torch.multinomial, torch.Tensor.uniform_, torch.Tensor.normal_,
                    torch.Tensor.random_, torch.Tensor.bernoulli_, torch.Tensor.exponential_}


class RandomCallAudit(TorchFunctionMode):
    """Records random calls made without a generator, or with an explicit device (which, with
    a CPU generator, is the CUDA crash 'Expected a cuda device type for generator')."""

    def __init__(self):
        super().__init__()
        self.faults = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RANDOM_FUNCTIONS:
            if kwargs.get('generator') is None:
                self.faults.append(f'{func.__name__} without a generator')
            if kwargs.get('device') is not None:
                self.faults.append(f'{func.__name__} with device={kwargs["device"]}')
        return func(*args, **kwargs)


@pytest.fixture(scope='module')
def good_parts():
    return model_size_parts(3, image_size=64, render_size=96, seed=2)


def _training_steps(model: DBMRNet, parts, generator, device):
    """One step of each stage, as the engine runs them."""
    batch = make_batch(*parts, model.cfg, AnomalyConfig(), generator, True, 0.1, device)
    out = model(batch.inp.images, batch.groups, generator, batch.targets)
    out.loss.backward()
    with torch.no_grad():
        tokens = model.score_tokens(batch.inp.images, batch.groups)
        features = head_features(model, batch.inp, batch.groups, tokens, None)
    loss = focal_loss(model.scoring_head(features.inputs, features.context), batch.mask)
    loss.backward()
    return batch, float(out.loss.detach()), float(loss.detach())


def test_training_step_draws_every_random_number_from_the_generator(good_parts):
    torch.manual_seed(0)
    model = DBMRNet(SMALL)
    audit = RandomCallAudit()
    with audit:
        _training_steps(model, good_parts, torch.Generator().manual_seed(0), 'cpu')
    assert not audit.faults, audit.faults


def test_synthesis_augmentation_and_masking_keep_to_the_data_device(good_parts):
    rgb, xyz = (t.to('meta') for t in good_parts)
    generator = torch.Generator().manual_seed(0)
    rgb, xyz, _ = augment(rgb, xyz, generator, brightness_jitter=0.2)
    out = synthesize(rgb, xyz, AnomalyConfig(), generator)
    assert {t.device.type for t in out} == {'meta'}
    masking = random_masking(3, 64, 0.75, torch.device('meta'), generator)
    assert {t.device.type for t in masking} == {'meta'}
    with pytest.raises(RuntimeError, match='device'):  # the check is real: CPU + meta fails
        _ = xyz + torch.zeros(3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_training_steps_match_the_cpu(good_parts):
    """Both stages step on CUDA, and a seed synthesises the same anomalies on either device."""
    torch.manual_seed(0)
    model = DBMRNet(SMALL).cuda()
    batch, loss, head_loss = _training_steps(model, good_parts,
                                             torch.Generator().manual_seed(3), 'cuda')
    assert np.isfinite(loss) and np.isfinite(head_loss)
    assert batch.inp.images.is_cuda and batch.mask.is_cuda
    cpu = synthesize(*good_parts, AnomalyConfig(), torch.Generator().manual_seed(9))
    gpu = synthesize(*(t.cuda() for t in good_parts), AnomalyConfig(),
                     torch.Generator().manual_seed(9))
    assert torch.equal(cpu.mask, gpu.mask.cpu()) and torch.equal(cpu.kind, gpu.kind.cpu())
    assert torch.allclose(cpu.xyz, gpu.xyz.cpu(), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_engine_epochs_in_bf16_follow_float32(good_parts):
    """Both stages' engine epochs on CUDA, as dbmr-train runs them, with the default bf16
    autocast and in float32: the network and the head learn, and the losses agree within
    5 % (the stated tolerance of mixed-precision training)."""
    from dbmr_ros.training.optim import build_optimizers, stage_network
    from dbmr_ros.training import engine
    from dbmr_ros.training.config import TrainConfig
    data = tuple(t.cuda() for t in good_parts)
    losses = {}
    for mixed_precision in (False, True):
        cfg = TrainConfig(batch_size=len(data[0]), mixed_precision=mixed_precision)
        torch.manual_seed(0)
        model = DBMRNet(SMALL).cuda()
        before = [p.detach().clone() for p in (model.patch_embed.projection.weight,
                                               next(model.scoring_head.parameters()))]
        optimizers, schedulers = build_optimizers(model, cfg, 1)
        generator = torch.Generator().manual_seed(5)
        batches = [torch.arange(len(data[0]))] * 2
        stage_1 = engine.reconstruction_epoch(stage_network(model, False, 1), model, data,
                                              batches, optimizers[0], schedulers[0], cfg,
                                              generator, 'cuda', 'stage 1', False)
        stage_2 = engine.head_epoch(stage_network(model, True, 1), model, data, batches,
                                    optimizers[1], schedulers[1], cfg, None, generator, 'cuda',
                                    'stage 2', False)
        after = (model.patch_embed.projection.weight, next(model.scoring_head.parameters()))
        assert all(not torch.equal(a, b) for a, b in zip(before, after))
        losses[mixed_precision] = (stage_1['loss'], stage_2['loss'])
    print(f'losses float32 {losses[False]}, bf16 {losses[True]}')
    for full, mixed in zip(losses[False], losses[True]):
        assert np.isfinite(mixed) and mixed == pytest.approx(full, rel=0.05)
