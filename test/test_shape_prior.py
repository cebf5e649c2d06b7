"""The shape prior: FPFH on the image grid (model.local_shape) and the model of good parts
patch descriptors (model.shape_prior: a coreset, fitted by
training.shape_prior)."""
import dataclasses

import numpy as np
import pytest
import torch

from dbmr_ros.data import open_dataset
from dbmr_ros.data.preprocess import preprocess, PreprocessConfig
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.model import DBMRConfig, DBMRNet
from dbmr_ros.model.head import NUM_INPUTS
from dbmr_ros.model import local_shape
from dbmr_ros.model.local_shape import fpfh, patch_descriptors, pca_normals
from dbmr_ros.symmetric3 import smallest_axis
from dbmr_ros.calibration import score_definition
from dbmr_ros.model.shape_prior import ShapePrior
from dbmr_ros.training.shape_prior import fit_shape_prior, greedy_coreset


def surface(height=None, size=112, spacing=0.0004, distance=0.4, tilt=0.3):
    """(1, S, S, 3) organized cloud of a tilted plane seen from the camera, a disc of valid
    points in the middle; `height` (S, S) metres added along the plane's normal."""
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                          torch.arange(size, dtype=torch.float64), indexing='ij')
    x, y = (u - size / 2) * spacing, (v - size / 2) * spacing
    z = distance + tilt * x
    xyz = torch.stack([x, y, z], -1)
    if height is not None:
        normal = torch.tensor([tilt, 0.0, -1.0], dtype=torch.float64)
        xyz = xyz + height[..., None] * normal / normal.norm()
    inside = (u - size / 2) ** 2 + (v - size / 2) ** 2 < (0.4 * size) ** 2
    return (xyz * inside[..., None]).float()[None], inside[None]


def bump(size=112, centre=(56, 40), sigma=4.0, height=0.0015):
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64),
                          torch.arange(size, dtype=torch.float64), indexing='ij')
    return height * torch.exp(-((v - centre[0]) ** 2 + (u - centre[1]) ** 2) / (2 * sigma ** 2))


def test_pca_normals_of_a_plane_face_the_camera():
    xyz, valid = surface()
    normals = pca_normals(xyz, valid, stride=2)
    assert normals.shape == (1, 56, 56, 3)
    expected = torch.tensor([0.3, 0.0, -1.0]) / torch.tensor([0.3, 0.0, -1.0]).norm()
    inner = valid[:, ::2, ::2] & (pca_normals(xyz, valid, stride=2).norm(dim=-1) > 0)
    assert torch.allclose(normals[inner], expected.expand(int(inner.sum()), 3), atol=1e-3)
    assert (normals[~valid[:, ::2, ::2]] == 0).all()


def test_patch_descriptors_see_a_bump_and_only_there():
    xyz, valid = surface()
    flat = patch_descriptors(xyz, valid, patch=8)
    assert flat.shape == (1, 33, 14, 14)
    on_part = flat.abs().sum(1) > 0
    assert not on_part[0, 0, 0] and on_part[0, 7, 7]       # background zero, part described
    bumped = patch_descriptors(*surface(bump()), patch=8)
    change = (bumped - flat).norm(dim=1)[0]                # (14, 14)
    assert change[7, 5] > 20 * change[7, 11]               # the bump's patch (row 56, col 40)
    # The descriptor ignores where the part lies in the image (whole patches moved).
    shifted = patch_descriptors(torch.roll(xyz, (8, -8), dims=(1, 2)),
                                torch.roll(valid, (8, -8), dims=(1, 2)), patch=8)
    assert torch.allclose(torch.roll(flat, (1, -1), dims=(2, 3)), shifted, atol=1e-3, rtol=1e-4)


def test_fpfh_over_the_nearest_points_ignores_a_depth_step_in_the_window():
    """With `neighbours`, a pixel's FPFH reads only the window's nearest points in space (a
    k-d tree's k nearest): beside a step of 2 cm, inside a window, it equals the FPFH of the
    plane far from the step; over the whole window the step's far side changes it."""
    xyz, valid = surface(tilt=0.0)
    xyz = xyz.clone()
    xyz[0, :, 60:, 2] += 0.02 * valid[0, :, 60:]          # the right part 2 cm farther away
    # The planes' own normals (a normal estimated across the step would differ there anyway).
    normals = torch.tensor([0.0, 0.0, -1.0]).expand_as(xyz) * valid[..., None]
    whole, nearest = (fpfh(xyz, normals, valid, radius=3, neighbours=k) for k in (0, 12))
    beside, far = (56, 58), (56, 40)    # two pixels left of the step; eighteen
    assert torch.allclose(nearest[0, :, beside[0], beside[1]], nearest[0, :, far[0], far[1]],
                          atol=1e-4)
    assert not torch.allclose(whole[0, :, beside[0], beside[1]], whole[0, :, far[0], far[1]],
                              atol=1.0)
    # Far from the step, the 47 nearest of the 48 window points are all 48 (the four corners
    # tie for the farthest, and a tie is kept): the two agree there.
    every = fpfh(xyz, normals, valid, radius=3, neighbours=47)
    assert torch.allclose(whole[0, :, far[0], far[1]], every[0, :, far[0], far[1]])


def test_model_with_and_without_prior():
    """A model with a prior carries its buffers in the state dict; a configuration
    without one (checkpoints made before it) builds the head for the base channels."""
    small = DBMRConfig(image_size=112, patch_size=16, num_points=256, num_groups=16,
                       group_size=8, embed_dim=32, depth=1, num_heads=2, decoder_dim=32,
                       decoder_heads=2, shape_prior_components=4)
    model = DBMRNet(small)
    assert 'shape_prior.bank' in model.state_dict()
    assert model.scoring_head.input_norm.num_features == NUM_INPUTS + 1
    old = DBMRNet(DBMRConfig.from_dict({k: v for k, v in small.to_dict().items()
                                        if k != 'shape_prior_components'}))
    assert old.shape_prior is None and old.scoring_head.input_norm.num_features == NUM_INPUTS


@pytest.mark.parametrize('device', [
    'cpu', pytest.param('cuda', marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason='needs a CUDA device'))])
def test_smallest_axis_agrees_with_eigh(device):
    """Power iteration (graph-recordable; whole-matrix products on CUDA) against
    torch.linalg.eigh on covariances of surface windows: two large eigenvalues and a small
    one, in random orientations."""
    generator = torch.Generator().manual_seed(0)
    rotations = torch.linalg.qr(torch.randn(200, 3, 3, generator=generator,
                                            dtype=torch.float64))[0]
    spread = torch.rand(200, 3, generator=generator, dtype=torch.float64) * torch.tensor(
        [0.05, 1.0, 1.0], dtype=torch.float64) + torch.tensor([0.0, 0.5, 0.5],
                                                              dtype=torch.float64)
    cov = rotations @ torch.diag_embed(spread) @ rotations.transpose(1, 2) * 1e-6
    start = torch.randn(200, 3, generator=generator, dtype=torch.float64)
    unique = cov[:, [0, 0, 0, 1, 1, 2], [0, 1, 2, 1, 2, 2]]
    axis = smallest_axis(unique.to(device), start.to(device)).cpu()
    reference = torch.linalg.eigh(cov)[1][..., 0]
    assert torch.allclose((axis * reference).sum(-1).abs(), torch.ones(200, dtype=torch.float64),
                          atol=1e-9)


def test_patch_descriptors_do_not_depend_on_the_batch():
    """Only a box around the batch's parts is computed (the GPU's way; the CPU's takes a box per
    sample); a part's descriptors are the whole image's whatever else the batch holds (a flat
    synthetic surface sits on bin edges, so any difference in what is summed shows)."""
    clouds, masks = [], []
    for centre in ((35, 35), (75, 70)):
        xyz, _ = surface(bump(centre=centre), tilt=0.0)
        v, u = torch.meshgrid(torch.arange(112), torch.arange(112), indexing='ij')
        inside = ((v - centre[0]) ** 2 + (u - centre[1]) ** 2 < 20 ** 2)[None]
        clouds.append(xyz * inside[..., None])
        masks.append(inside)
    both = local_shape.descriptors_in_box(torch.cat(clouds), torch.cat(masks), 4)
    alone = torch.cat([patch_descriptors(c, m, 4) for c, m in zip(clouds, masks)])
    assert torch.equal(both, alone)
    assert torch.equal(patch_descriptors(torch.cat(clouds), torch.cat(masks), 4), alone)
    # ... and the same as computing the whole image (no box at all).
    whole = fpfh_whole_image(clouds[0], masks[0], 4)
    assert torch.equal(alone[:1], whole)


def fpfh_whole_image(xyz, valid, patch, stride=2):
    """patch_descriptors without its box: every pixel of the image."""
    normals = pca_normals(xyz, valid, stride=stride)
    every = (slice(None), slice(None, None, stride), slice(None, None, stride))
    features = fpfh(xyz[every], normals, valid[every])
    features = torch.nn.functional.avg_pool2d(features, 3, stride=1, padding=1)
    return torch.nn.functional.avg_pool2d(features, patch // stride)


def test_grid_fpfh_helpers_equal_the_straightforward_tensors():
    """The CPU-cheap forms in local_shape equal the straightforward tensors up to rounding: the
    cross product torch.cross, the window sum the sum of the unfolded windows."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2, 3, 25, 9, 11, generator=generator)
    assert torch.allclose(local_shape._cross(a, b), torch.cross(a, b, dim=1), atol=1e-6)
    values = torch.randn(2, 33, 9, 11, generator=generator)
    weights = torch.rand(2, 25, 9, 11, generator=generator)
    unfolded = local_shape._windows(values, 2)                              # (B, 33, K, H, W)
    expected = (unfolded * weights[:, None]).sum(2)
    assert torch.allclose(local_shape._window_sum(values, weights, 2), expected, atol=1e-5)


def test_window_pair_bins_compute_half_the_pairs_and_equal_all_of_them():
    """Each pixel's bins with the offsets before its window's centre are read from the
    neighbour's bins with the opposite offset: the same as computing every pair (random
    normals: no two angles tie)."""
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(2, 3, 9, 11, generator=generator) * 0.001
    normals = torch.nn.functional.normalize(torch.randn(2, 3, 9, 11, generator=generator), dim=1)
    near = local_shape._windows(torch.cat([points, normals, torch.ones(2, 1, 9, 11)], 1), 2)
    every = local_shape.pair_bins(points[:, :, None], normals[:, :, None], near[:, :3],
                                  near[:, 3:6])
    half = local_shape.window_pair_bins(points, normals, near[:, :3], near[:, 3:6], 2)
    inside = (near[:, 6:] > 0).expand_as(every).clone()
    inside[:, :, 12] = False                                  # the centre: not a pair
    assert torch.equal(half[inside], every[inside])


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_descriptors_and_prior_on_cuda_follow_the_cpu(mvtec_root):
    """The descriptors and the prior's scores on CUDA against the CPU, on real cable_gland parts
    at the tiny preset's size: the same float32 arithmetic in another order, so a pair whose
    angle lies on a bin edge may fall into the neighbouring bin. Stated tolerance: descriptors
    (bins 0 to 200) within 2 and on average within 0.01; standardised scores within 0.25 and
    on average within 0.002."""
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'validation')[:6]
    clouds = torch.from_numpy(np.stack([preprocess(s.rgb, s.xyz, PreprocessConfig())[1]
                                        for s in (ref.load() for ref in refs)]))
    valid = valid_mask(clouds)
    patch = DBMRConfig().shape_patch_size
    prior = ShapePrior(64, patch)
    fit_shape_prior(prior, clouds.numpy(), device='cpu')
    cpu_descriptors = patch_descriptors(clouds, valid, patch)
    cuda_descriptors = patch_descriptors(clouds.cuda(), valid.cuda(), patch).cpu()
    cpu_scores = prior.patch_scores(clouds, valid)
    cuda_scores = prior.cuda().patch_scores(clouds.cuda(), valid.cuda()).cpu()
    descriptor_error = (cuda_descriptors - cpu_descriptors).abs()
    score_error = (cuda_scores - cpu_scores).abs()
    print(f'descriptors: largest difference {descriptor_error.max():.2e}, mean '
          f'{descriptor_error.mean():.2e}; scores: largest {score_error.max():.2e}, mean '
          f'{score_error.mean():.2e}')
    assert descriptor_error.max() <= 2 and descriptor_error.mean() <= 0.01
    assert score_error.max() <= 0.25 and score_error.mean() <= 0.002


def test_greedy_coreset_takes_the_farthest_point_next():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 4.0], [9.0, 0.0]])
    # From the first: the farthest (10, 0), then the one farthest from both, (0, 4), ...
    assert greedy_coreset(points, 5).tolist() == [0, 2, 3, 1, 4]
    assert greedy_coreset(points, 3).tolist() == [0, 2, 3]       # a prefix: the smaller set
    assert greedy_coreset(points, 9).tolist() == [0, 2, 3, 1, 4]  # never more than there are
    repeated = torch.cat([points, points])
    assert greedy_coreset(repeated, 9).tolist() == [0, 2, 3, 1, 4]  # nor than are distinct


def test_coreset_prior_is_the_nearest_entry_and_leaves_each_part_out():
    """The coreset's raw score is the distance to the nearest entry (brute force); its first
    entry is the background's zero descriptor; a training part scored as the head's training
    scores it (`parts`) finds none of its own entries; a bump scores above good parts."""
    good = torch.cat([surface(bump(centre=(56, 56), height=h, sigma=20.0))[0]
                      for h in (0.0, 0.001, -0.001, 0.002)]).numpy()
    # One entry more than the zero descriptor and every patch can fill, so fewer are distinct
    # and the rest repeat the first. (How many of these smooth surfaces' patches come out
    # distinct depends on the CPU's rounding: under 40 on the machines this test was written
    # on, 1861 on another.)
    patches = 4 * 28 * 28
    prior = ShapePrior(components=patches + 2, patch_size=4)
    summary = fit_shape_prior(prior, good, device='cpu')
    assert summary['patches'] == patches
    distinct = summary['entries']
    assert 10 < distinct < len(prior.bank) and not prior.bank[distinct:].any()
    assert not prior.bank[0].any() and prior.bank_parts[0] == -1
    assert set(prior.bank_parts[1:distinct].tolist()) <= {0, 1, 2, 3}
    x = torch.rand(2, 7, 33, generator=torch.Generator().manual_seed(0)) * 60
    brute = (x[:, :, None] - prior.bank).norm(dim=-1).amin(-1)
    # (The matrix-product form rounds: bins run to 200, float32 squares to 4e4.)
    assert torch.allclose(prior.nearest(x), brute, atol=0.1)
    # Each part without its own entries: exactly the brute force over the others' entries.
    first = torch.from_numpy(good[:1])
    descriptors = patch_descriptors(first, valid_mask(first), 4)[0].flatten(1).T[None]
    others = prior.bank[prior.bank_parts != 0]
    brute = (descriptors[0][:, None] - others).norm(dim=-1).amin(-1)
    left_out = prior.nearest(descriptors, torch.tensor([0]))[0]
    assert torch.allclose(left_out, brute, atol=0.1)
    own = prior.bank[prior.bank_parts == 0]
    assert len(own) and prior.nearest(own[None])[0].max() < 0.1 < 1 < left_out.max()
    xyz, valid = surface(bump(centre=(56, 40), sigma=3.0, height=0.002))
    scores = prior.patch_scores(xyz, valid)[0]                              # (28, 28)
    good_scores = prior.patch_scores(*surface())[0]
    assert good_scores[13:16, 9:12].max() < scores[13:16, 9:12].max() - 1


def test_model_with_a_shape_prior_and_its_score_definition():
    small = DBMRConfig(image_size=112, patch_size=16, num_points=256, num_groups=16,
                       group_size=8, embed_dim=32, depth=1, num_heads=2, decoder_dim=32,
                       decoder_heads=2, shape_prior_components=8)
    model = DBMRNet(small)
    assert isinstance(model.shape_prior, ShapePrior)
    assert model.state_dict()['shape_prior.bank'].shape == (8, 33)
    assert model.scoring_head.input_norm.num_features == NUM_INPUTS + 1
    # A changed prior is a changed score: an old threshold cannot be reused with it.
    without = dataclasses.replace(small, shape_prior_components=0)
    assert score_definition(small, 'learned') != score_definition(without, 'learned')
    assert 'shape_prior' not in score_definition(without, 'learned')['head']
    # The prior's window is the model's too: its descriptors, and so its score, change with it.
    wider = dataclasses.replace(small, shape_prior_radius=3)
    assert (model.shape_prior.radius, DBMRNet(wider).shape_prior.radius) == (2, 3)
    assert score_definition(wider, 'learned') != score_definition(small, 'learned')
    assert 'shape_prior_radius' not in score_definition(small, 'learned')['head']
    xyz, valid = surface(bump(centre=(56, 40), sigma=3.0, height=0.002))
    assert not torch.allclose(patch_descriptors(xyz, valid, 8),
                              patch_descriptors(xyz, valid, 8, radius=3))
    with pytest.raises(ValueError, match='shape_prior_radius'):
        DBMRConfig(shape_prior_radius=0)


def test_training_prior_maps_remember_unchanged_parts_bit_for_bit(mvtec_root):
    """The head stage's remembered prior maps (`PriorMaps`) equal the prior computed afresh, bit
    for bit, on real cable_gland parts under the training's augmentation and anomalies; a part
    is remembered per pose, and only where its batch left its geometry alone."""
    from dbmr_ros.data.anomalies import AnomalyConfig, NONE, RGB
    from dbmr_ros.model.scoring import shape_prior_map
    from dbmr_ros.training.engine import make_batch
    from dbmr_ros.training.shape_prior import PriorMaps
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'validation')[:6]
    pairs = [preprocess(s.rgb, s.xyz, PreprocessConfig()) for s in (r.load() for r in refs)]
    rgb, xyz = (torch.from_numpy(np.stack([p[i] for p in pairs])) for i in (0, 1))
    cfg = DBMRConfig(shape_prior_components=64, shape_prior_radius=3)
    model = DBMRNet(cfg).eval()
    fit_shape_prior(model.shape_prior, xyz.numpy(), device='cpu')
    maps = PriorMaps(model.shape_prior)
    generator = torch.Generator().manual_seed(1)
    hits = 0
    for step in range(8):   # the first three unaugmented: parts come back in the same pose
        parts = torch.randperm(6, generator=generator)[:4]
        batch = make_batch(rgb[parts], xyz[parts], cfg, AnomalyConfig(), generator, step > 2,
                           0.15, 'cpu')
        known = {key for key in maps.scores}
        remembered = maps(batch.inp, parts, batch.kind, batch.pose)
        assert torch.equal(remembered, shape_prior_map(model, batch.inp, parts))
        for part, kind in zip(parts.tolist(), batch.kind.tolist()):
            key = (part, batch.pose)
            hits += key in known and kind in (NONE, RGB)
            assert (key in maps.scores) == (key in known or kind in (NONE, RGB))
    assert hits > 0
