"""Synthetic RGB-D anomalies (dbmr_ros.data.anomalies) and the grid operations they use."""
import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from dbmr_ros.data.anomalies import (AnomalyConfig, anomalous_copies, DISPLACED, KIND_NAMES,
                                     NONE, REMOVED, RGB, RGB_DISPLACED, RGB_REMOVED,
                                     synthesize)
from dbmr_ros.data import random_fields
from dbmr_ros.data.random_fields import perlin
from dbmr_ros.model.grid import dilate, gaussian_blur, surface_normals
from parts import model_size_parts

ONLY_RGB = AnomalyConfig(modality_weights=(1.0, 0.0, 0.0))
ONLY_DISPLACED = AnomalyConfig(modality_weights=(0.0, 1.0, 0.0), removal_share=0.0)
ONLY_REMOVED = AnomalyConfig(modality_weights=(0.0, 1.0, 0.0), removal_share=1.0)
BOTH = AnomalyConfig(modality_weights=(0.0, 0.0, 1.0))


@pytest.fixture(scope='module')
def parts():
    """Six synthetic parts at model size 96: rgb (6, 96, 96, 3) uint8, xyz float32 metres."""
    return model_size_parts(6, image_size=96, render_size=128, seed=11)


def corrupt(parts, cfg=AnomalyConfig(), seed=0, probability=1.0):
    return synthesize(*parts, cfg, torch.Generator().manual_seed(seed), probability)


def test_seeded_and_deterministic(parts):
    a, b, c = corrupt(parts, seed=5), corrupt(parts, seed=5), corrupt(parts, seed=6)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a.mask, c.mask)
    # The number of draws depends on the batch's shape only, not on its content: the stream
    # after a batch is aligned whatever the parts look like.
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    synthesize(*parts, AnomalyConfig(), g1)
    synthesize(parts[0].flip(1), parts[1] * 0, AnomalyConfig(), g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_regions_lie_on_the_object_and_vary_in_size(parts):
    valid = (parts[1] != 0).any(-1)
    sizes = []
    for seed in range(8):
        out = corrupt(parts, seed=seed)
        assert out.mask.flatten(1).any(1).all(), 'every part with points gets an anomaly'
        assert not (out.mask & ~valid).any(), 'anomalies lie on the object'
        assert (out.kind != NONE).all()
        sizes += out.mask.flatten(1).sum(1).tolist()
    assert min(sizes) < 40 and max(sizes) > 200, sizes


def test_probability_zero_changes_nothing(parts):
    out = corrupt(parts, probability=0.0)
    assert torch.equal(out.rgb, parts[0]) and torch.equal(out.xyz, parts[1])
    assert not out.mask.any() and (out.kind == NONE).all()
    shares = [corrupt(parts, seed=s, probability=0.5).mask.flatten(1).any(1).float().mean()
              for s in range(20)]
    assert 0.3 < float(torch.stack(shares).mean()) < 0.7


def test_rgb_anomaly_changes_colour_inside_the_mask_only(parts):
    out = corrupt(parts, ONLY_RGB)
    assert (out.kind == RGB).all()
    assert torch.equal(out.xyz, parts[1])
    changed = (out.rgb != parts[0]).any(-1)
    assert not (changed & ~out.mask).any()
    assert changed.sum() > 0.5 * out.mask.sum()


def test_texture_sources_each_blend_foreign_content(parts):
    for source in range(3):
        weights = tuple(float(i == source) for i in range(3))
        cfg = dataclasses.replace(ONLY_RGB, texture_weights=weights, opacity=(1.0, 1.0))
        out = corrupt(parts, cfg, seed=source)
        difference = (out.rgb.float() - parts[0].float()).abs().sum(-1)[out.mask]
        assert difference.mean() > 10, (source, float(difference.mean()))


def test_displacement_is_a_smooth_bump_of_the_configured_height(parts):
    cfg = dataclasses.replace(ONLY_DISPLACED, displacement=(0.1, 0.1), smoothing=1.5)
    out = corrupt(parts, cfg)
    assert (out.kind == DISPLACED).all() and torch.equal(out.rgb, parts[0])
    valid = (parts[1] != 0).any(-1)
    assert torch.equal((out.xyz != 0).any(-1), valid), 'no point appears or disappears'
    moved = (out.xyz - parts[1]).norm(dim=-1)
    # Only near the region (the Gaussian edge reaches ~4 sigma beyond it).
    assert not ((moved > 1e-7) & ~dilate(out.mask, 7)).any()
    for i in range(len(moved)):
        points = parts[1][i][valid[i]]
        rms = ((points - points.mean(0)) ** 2).sum(-1).mean().sqrt()
        assert abs(float(moved[i].max()) / float(rms) - 0.1) < 0.01
    # Smooth: neighbouring pixels inside the region move by similar amounts.
    inside = out.mask[:, 1:] & out.mask[:, :-1]
    jumps = (moved[:, 1:] - moved[:, :-1]).abs()[inside]
    assert float(jumps.max()) < 0.5 * float(moved.max())


def test_removal_deletes_exactly_the_region(parts):
    out = corrupt(parts, ONLY_REMOVED)
    assert (out.kind == REMOVED).all() and torch.equal(out.rgb, parts[0])
    assert not (out.xyz[out.mask] != 0).any()
    assert torch.equal(out.xyz[~out.mask], parts[1][~out.mask])


def test_both_modalities_on_the_same_region(parts):
    out = corrupt(parts, BOTH, seed=3)
    assert set(out.kind.tolist()) <= {RGB_DISPLACED, RGB_REMOVED}
    for i in range(len(out.kind)):
        rgb_changed = (out.rgb[i] != parts[0][i]).any(-1)
        xyz_changed = (out.xyz[i] != parts[1][i]).any(-1)
        assert (rgb_changed & out.mask[i]).any() and (xyz_changed & out.mask[i]).any()
    assert KIND_NAMES[RGB_REMOVED] == 'rgb+removed'


def test_perlin_noise_range_and_smoothness():
    batch, lattice = 3, 12
    generator = torch.Generator().manual_seed(0)
    noise = perlin(128, torch.tensor([2, 4, 10]), torch.rand(batch, generator=generator),
                   torch.rand(batch, 2, generator=generator),
                   torch.rand(batch, lattice, lattice, generator=generator) * 6.28)
    assert noise.shape == (3, 128, 128)
    assert -1.05 < float(noise.min()) and float(noise.max()) < 1.05
    assert abs(float(noise.mean())) < 0.25
    # Finer grids vary faster.
    roughness = (noise[:, 1:] - noise[:, :-1]).abs().mean((1, 2))
    assert roughness[0] < roughness[1] < roughness[2]


def test_anomalous_copies_are_seeded(parts):
    rgb, xyz = parts[0].numpy(), parts[1].numpy()
    a = anomalous_copies(rgb, xyz, AnomalyConfig(), seed=4, copies=2, batch_size=4)
    b = anomalous_copies(rgb, xyz, AnomalyConfig(), seed=4, copies=2, batch_size=4)
    assert a[0].shape == (12, 96, 96, 3) and a[2].shape == (12, 96, 96) and a[3].shape == (12,)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[2].reshape(12, -1).any(1).all() and (a[3] != NONE).all()


def test_surface_normals_of_a_tilted_plane_face_the_camera():
    rows, cols = torch.meshgrid(torch.linspace(-0.05, 0.05, 32), torch.linspace(-0.05, 0.05, 32),
                                indexing='ij')
    depth = 0.5 + 0.3 * cols                           # z rises with x: normal ~ (0.3, 0, -1)
    xyz = torch.stack([cols, rows, depth], -1)[None]
    valid = torch.ones(1, 32, 32, dtype=torch.bool)
    valid[0, 10, 10] = False
    normals = surface_normals(xyz * valid[..., None], valid)
    expected = torch.tensor([0.3, 0.0, -1.0]) / torch.tensor([0.3, 0.0, -1.0]).norm()
    inner = normals[0, 2:-2, 2:-2][valid[0, 2:-2, 2:-2]]
    assert torch.allclose(inner, expected.expand_as(inner), atol=1e-3)
    assert torch.equal(normals[0, 10, 10], torch.zeros(3)), 'invalid pixels get no normal'
    assert torch.allclose(normals.norm(dim=-1)[valid], torch.ones(int(valid.sum())), atol=1e-5)


def test_gaussian_blur_keeps_mass_and_dilate_grows():
    maps = torch.zeros(1, 41, 41)
    maps[0, 20, 20] = 1.0
    blurred = gaussian_blur(maps, 3.0)
    assert abs(float(blurred.sum()) - 1.0) < 1e-4 and float(blurred.max()) < 0.05
    assert torch.equal(gaussian_blur(maps, 0), maps)
    grown = dilate(maps > 0, 2)
    assert int(grown.sum()) == 25
    masks = torch.rand(2, 50, 37, generator=torch.Generator().manual_seed(0)) > 0.99
    square = torch.nn.functional.max_pool2d(masks[:, None].float(), 17, stride=1, padding=8)
    assert torch.equal(dilate(masks, 8), square[:, 0] > 0)  # the square pool, exactly
    wide = torch.nn.functional.max_pool2d(masks[:, None].float(), 81, stride=1, padding=40)
    assert torch.equal(dilate(masks, 40), wide[:, 0] > 0)  # a window wider than the image


@pytest.mark.parametrize('shape, sigma', [((3, 224, 224), 4.0), ((2, 30, 50), 2.0),
                                          ((1, 7, 9), 1.5), ((2, 56, 56), 0.7)])
def test_gaussian_blur_is_scipys_mirrored_gaussian(shape, sigma):
    """The banded-matrix blur against an independent definition: SciPy's separable Gaussian
    truncated at 4 sigma, mirrored at the borders (torch's 'reflect'), including windows that
    reach past half the image (two reflections into one entry)."""
    maps = torch.rand(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    expected = gaussian_filter1d(gaussian_filter1d(maps.numpy(), sigma, axis=1, mode='mirror'),
                                 sigma, axis=2, mode='mirror')
    assert np.allclose(gaussian_blur(maps, sigma).numpy(), expected, rtol=0, atol=1e-12)
    single = gaussian_blur(maps.float(), sigma)
    assert single.dtype == torch.float32 and np.allclose(single.numpy(), expected, atol=1e-6)


def test_gaussian_blur_first_used_in_inference_mode_still_trains():
    """The blur's matrix is built once per size and kept: built first under inference_mode
    (the Detector), it must still serve a blur that gradients flow through (the head's
    training)."""
    with torch.inference_mode():
        gaussian_blur(torch.rand(1, 37, 37), 2.5)
    maps = torch.rand(1, 37, 37, requires_grad=True)
    gaussian_blur(maps, 2.5).sum().backward()
    # Each output's weights sum to 1, so each input's gradient sums to the pixel count.
    assert abs(float(maps.grad.sum()) - 37 * 37) < 1e-3


def test_synthesis_of_the_needed_samples_only_equals_every_sample_bit_for_bit(
        mvtec_root, monkeypatch):
    """On the CPU the synthesis computes the noise, textures and bumps of the samples that read
    them only (`random_fields.for_samples`): on real cable_gland parts, with the training's
    probability and kinds, every output is bit for bit what computing every sample gives."""
    from dbmr_ros.data import surface_anomalies
    from dbmr_ros.data.prepared import load_split
    from dbmr_ros.data.preprocess import PreprocessConfig
    from dbmr_ros.data.preprocess_cache import PreprocessCache
    config = PreprocessConfig(image_size=112)
    rgb, xyz = (torch.from_numpy(a[:8]) for a in load_split(
        'mvtec3d', mvtec_root, 'cable_gland', 'validation', config, PreprocessCache(config)))

    def batches():
        generator = torch.Generator().manual_seed(4)
        return [synthesize(rgb, xyz, AnomalyConfig(), generator) for _ in range(4)]

    needed_only = batches()
    for module in (random_fields, surface_anomalies):
        monkeypatch.setattr(module, 'for_samples', lambda needed, compute, *x: compute(*x))
    every = batches()
    kinds = torch.cat([b.kind for b in every])
    assert {DISPLACED, RGB, NONE} <= set(kinds.tolist())   # bumps, textures and neither
    for ours, theirs in zip(needed_only, every):
        for a, b in zip(ours, theirs):
            assert torch.equal(a.view(torch.int32) if a.is_floating_point() else a,
                               b.view(torch.int32) if b.is_floating_point() else b)


def test_for_samples_computes_the_needed_samples_as_the_whole_batch_would():
    x = torch.randn(5, 4, 3)
    needed = torch.tensor([True, False, True, False, False])
    out = random_fields.for_samples(needed, lambda t: t.exp() * 2, x)
    assert torch.equal(out[needed], (x.exp() * 2)[needed]) and not out[~needed].any()
    assert torch.equal(random_fields.for_samples(None, torch.exp, x), x.exp())
