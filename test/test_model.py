"""DBMRNet: shapes, masking, local alignment, losses, point ops, checkpoints, Detector."""
import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from scipy.ndimage import binary_dilation

from dbmr_ros.calibration import Calibration
from dbmr_ros.checkpoint import CheckpointError, CheckpointMeta, load_checkpoint, save_checkpoint
from dbmr_ros.data.preprocess import PreprocessConfig, preprocess, square_padding
from dbmr_ros.data.synthetic import render_sample
from dbmr_ros.detector import Detector
from dbmr_ros.model import DBMRConfig, DBMRNet, PRESETS
from dbmr_ros.model.head import focal_loss, head_inputs, INPUT_CHANNELS, NUM_INPUTS, ScoringHead
from dbmr_ros.model.inputs import even_ranks, group_points, prepare
from dbmr_ros.model.masking import no_masking, random_masking
from dbmr_ros.model.point_ops import chamfer_l2, fps, fps_numpy, fps_torch, knn, knn_torch
from dbmr_ros.model.scoring import group_map
from dbmr_ros.model.transformer import local_alignment_mask
from dbmr_ros.resources import share_dir
from parts import model_size_parts

SMALL = DBMRConfig(image_size=64, patch_size=8, num_points=400, num_groups=24, group_size=12,
                   embed_dim=32, depth=2, num_heads=2, decoder_dim=32, decoder_heads=2)
# Tiny test images are sparser than real scans: DBSCAN needs fewer points per core.
PCFG = PreprocessConfig(image_size=64, dbscan_min_points=8)


def synthetic_batch(n=2, size=96, cfg=SMALL, pcfg=PCFG, defect=None, seed=0):
    rgbs, xyzs, gts = [], [], []
    rng = np.random.default_rng(seed)
    for _ in range(n):
        s = render_sample(rng, 'puck', size, defect)
        rgb, xyz = preprocess(s.rgb, s.xyz, pcfg)
        rgbs.append(rgb)
        xyzs.append(xyz)
        gts.append(s.gt)
    return np.stack(rgbs), np.stack(xyzs), gts


def model_input(rgb, xyz, cfg=SMALL):
    inp = prepare(torch.from_numpy(rgb), torch.from_numpy(xyz), cfg.num_points, cfg.group_size)
    return inp, group_points(inp, cfg.num_groups, cfg.group_size)


@pytest.mark.parametrize('image_size,patch,points,groups,k', [(48, 16, 301, 17, 7),
                                                              (72, 8, 555, 33, 9)])
def test_token_shapes_for_odd_sizes(image_size, patch, points, groups, k):
    cfg = dataclasses.replace(SMALL, image_size=image_size, patch_size=patch, num_points=points,
                              num_groups=groups, group_size=k)
    rgb, xyz, _ = synthetic_batch(3, 80, cfg, dataclasses.replace(PCFG, image_size=image_size))
    xyz[1, : image_size // 2] = 0  # fewer valid points in one sample than in the others
    inp, grp = model_input(rgb, xyz, cfg)
    assert inp.points.shape == (3, points, 3) and grp.neighborhoods.shape == (3, groups, k, 3)
    assert inp.valid.reshape(3, -1).gather(1, inp.point_pixels).all()  # only valid pixels
    model = DBMRNet(cfg)
    out = model(inp.images, grp)
    grid = image_size // patch
    assert out.pred_patches.shape == (3, grid * grid, patch * patch * 3)
    assert out.pred_groups.shape == (3, groups, k, 3)
    model.eval()
    scores = model.score_tokens(inp.images, grp)
    assert scores.group.shape == (3, groups)
    assert scores.features_2d.shape == (3, grid * grid, cfg.decoder_dim)
    assert scores.reconstruction.shape == inp.images.shape


def test_too_few_points_is_a_clear_error():
    rgb, xyz, _ = synthetic_batch(1)
    xyz[:] = 0
    with pytest.raises(ValueError, match='valid points'):
        model_input(rgb, xyz)


def test_masking_ratio_and_restore():
    m = random_masking(4, 50, 0.6, generator=torch.Generator().manual_seed(0))
    assert (m.mask.sum(1) == 30).all() and m.keep.shape == (4, 20)
    tokens = torch.arange(50).float().expand(4, 50)
    visible = torch.gather(tokens, 1, m.keep)
    assert (m.mask.gather(1, m.keep) == 0).all()  # kept tokens are the unmasked ones
    shuffled = torch.gather(tokens, 1, torch.argsort(m.restore, 1))
    assert torch.equal(torch.gather(shuffled, 1, m.restore), tokens)  # restore undoes the shuffle
    assert torch.equal(visible, shuffled[:, :20])
    assert not torch.equal(m.keep[0], m.keep[1])  # independent per sample
    assert no_masking(2, 5).mask.sum() == 0


def test_local_alignment_mask_window():
    patch_cells = torch.tensor([[[0, 0], [0, 5], [3, 3]]])
    group_cells = torch.tensor([[[0, 1], [4, 4]]])
    mask = local_alignment_mask(patch_cells, group_cells, radius=1)[0]
    assert mask.shape == (5, 5) and mask[:3, :3].all() and mask[3:, 3:].all()
    assert mask[0, 3] and not mask[1, 3] and not mask[2, 3]     # group (0,1): patch (0,0) only
    assert not mask[0, 4] and not mask[1, 4] and mask[2, 4]     # group (4,4): patch (3,3) only
    assert torch.equal(mask[:3, 3:], mask[3:, :3].T)


def test_group_tokens_see_only_near_patches():
    """One encoder layer: a group token changes with a near patch, never with a far one."""
    cfg = dataclasses.replace(SMALL, depth=1)
    torch.manual_seed(0)
    model = DBMRNet(cfg).eval()
    rgb, xyz, _ = synthetic_batch(1)
    inp, grp = model_input(rgb, xyz, cfg)
    # Put every group centre in the top-left corner cell (0, 0).
    grp = grp._replace(center_pixels=torch.zeros_like(grp.center_pixels))
    m2d, m3d = no_masking(1, cfg.num_patches), no_masking(1, cfg.num_groups)
    base = model.encode(model.embed(inp.images, grp), grp, m2d, m3d)[1]
    p = cfg.patch_size
    far, near = inp.images.clone(), inp.images.clone()
    far[..., -p:, -p:] += 1.0   # bottom-right patch: beyond window + conv receptive field
    near[..., :p, :p] += 1.0    # the centres' own patch
    assert torch.allclose(model.encode(model.embed(far, grp), grp, m2d, m3d)[1], base,
                          atol=1e-6)
    assert not torch.allclose(model.encode(model.embed(near, grp), grp, m2d, m3d)[1], base,
                              atol=1e-4)


def test_losses_finite_and_decrease_when_overfitting():
    torch.manual_seed(0)
    rgb, xyz, _ = synthetic_batch(2)
    inp, grp = model_input(rgb, xyz)
    model = DBMRNet(SMALL)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for step in range(40):
        out = model(inp.images, grp, torch.Generator().manual_seed(step % 2))
        assert all(torch.isfinite(v) for v in out.losses.values())
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if first is None:
            first = {k: float(v.detach()) for k, v in out.losses.items()}
    last = {k: float(v.detach()) for k, v in out.losses.items()}
    for key in first:
        assert last[key] < 0.7 * first[key], (key, first[key], last[key])


def test_fps_numpy_gives_the_torch_loops_indices():
    """The CPU's numpy loop against the torch loop, bit for bit: clouds of preprocessed parts
    at both presets' sizes (a batch of two), exact ties on an integer grid (the lowest index,
    as torch's argmax), float64; `fps` takes it for CPU tensors."""
    _, xyz = model_size_parts(2, 224, 400, seed=3)
    grid = torch.stack(torch.meshgrid(*[torch.arange(10.0)] * 3, indexing='ij'), -1)
    ties = grid.reshape(1, 1000, 3)[:, torch.randperm(1000, generator=torch.Generator()
                                                      .manual_seed(0)) % 500]
    cases = [(prepare(torch.zeros_like(xyz, dtype=torch.uint8), xyz, cfg.num_points,
                      16).points, cfg.num_groups) for cfg in PRESETS.values()]
    for points, samples in cases + [(ties, 200), (ties.double(), 200)]:
        expected = fps_torch(points, samples)
        assert torch.equal(fps_numpy(points, samples), expected)
        assert torch.equal(fps(points, samples), expected)
    assert len(set(fps_numpy(ties, 200)[0].tolist())) == 200   # no point picked twice


def test_fps_and_knn_against_brute_force():
    torch.manual_seed(0)
    points = torch.rand(2, 200, 3)
    idx = fps_torch(points, 10)
    assert (idx[:, 0] == 0).all() and idx.unique(dim=1).shape[1] == 10
    # The second sample is the farthest point from the first.
    far = (points - points[:, :1]).norm(dim=-1).argmax(1)
    assert torch.equal(idx[:, 1], far)
    queries = points[:, :5]
    nn_idx = knn_torch(points, queries, 4)
    brute = torch.cdist(queries, points).argsort(-1)[..., :4]
    assert torch.equal(nn_idx.sort(-1).values, brute.sort(-1).values)
    assert torch.equal(fps(points, 10), idx) and torch.equal(knn(points, queries, 4), nn_idx)
    # The whole sequence: each next point is the farthest from those already chosen.
    for b in range(2):
        chosen = [0]
        for _ in range(9):
            nearest = torch.cdist(points[b], points[b, chosen]).min(dim=1).values
            chosen.append(int(nearest.argmax()))
        assert idx[b].tolist() == chosen


def test_even_ranks_stay_inside_the_valid_points():
    """The training offset's largest float32 value once asked for the point after the last
    (a crash after 157 epochs): ranks stay in [0, count) and evenly spaced."""
    counts = torch.tensor([7450, 4096, 5000])
    for offset in (0.0, 0.5, 1.0 - 2.0 ** -24):
        ranks = even_ranks(counts, 4096, torch.full((3, 1), offset))
        assert (ranks >= 0).all() and (ranks < counts[:, None]).all()
        assert (ranks.diff(dim=1) >= 0).all()
    assert torch.equal(even_ranks(counts[1:2], 4096, torch.zeros(1, 1))[0], torch.arange(4096))


def test_group_map_gives_each_point_its_nearest_group():
    """Every valid pixel gets the score of its nearest centre, background pixels 0, also in a
    batch whose clouds have different numbers of valid pixels."""
    rgb, xyz, _ = synthetic_batch(n=2)
    xyz[1, :20] = 0.0  # fewer valid pixels in the second sample
    inp, groups = model_input(rgb, xyz)
    scores = torch.rand(2, SMALL.num_groups)
    maps = group_map(scores, inp, groups)
    assert inp.valid[0].sum() != inp.valid[1].sum()
    for b in range(2):
        nearest = torch.cdist(inp.xyz[b].reshape(-1, 3), groups.centers[b]).argmin(1)
        expected = (scores[b][nearest] * inp.valid[b].reshape(-1)).view_as(maps[b])
        assert torch.equal(maps[b], expected)


def test_chamfer_known_values():
    a = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    b = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    assert float(chamfer_l2(a, b)) == 0.0
    c = torch.tensor([[[0.0, 0, 2]]])
    # a -> c: squared distances 4 and 5 (mean 4.5); c -> a: 4.
    assert float(chamfer_l2(a, c)) == pytest.approx(8.5)
    a.requires_grad_(True)
    chamfer_l2(a, b).backward()  # identical sets: finite gradient at distance 0
    assert torch.isfinite(a.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA for the extension kernels')
def test_cuda_extension_parity():
    from dbmr_ros.model import point_ops
    if point_ops._fps_cuda is None and point_ops._KnnCuda is None:
        pytest.skip('pointnet2_ops / knn_cuda are not installed')
    points = torch.rand(2, 500, 3, device='cuda')
    assert torch.equal(fps(points, 32).cpu(), fps_torch(points.cpu(), 32))
    queries = points[:, :16]
    assert torch.equal(knn(points, queries, 8).sort(-1).values.cpu(),
                       knn_torch(points.cpu(), queries.cpu(), 8).sort(-1).values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_graph_farthest_point_sampling_matches_the_loop():
    """The replayed graph gives the loop's indices, for new points of a recorded shape too."""
    from dbmr_ros.model.point_ops import fps_graphed
    generator = torch.Generator().manual_seed(0)
    for shape in ((2, 500, 3), (3, 2048, 3), (2, 500, 3)):
        points = torch.rand(shape, generator=generator).cuda()
        assert torch.equal(fps_graphed(points, 64), fps_torch(points, 64))
        assert torch.equal(fps_graphed(points, 64).cpu(), fps_torch(points.cpu(), 64))
    with torch.inference_mode():  # the Detector's mode, then training's, one shape
        inferred = fps_graphed(points, 64)
    assert torch.equal(fps_graphed(points, 64), inferred)


def _meta(cfg=SMALL):
    return CheckpointMeta(model=cfg, preprocess=PCFG, calibration=Calibration.manual(
        cfg, {'mean_2d': 1.0, 'mean_3d': 1.0}, 2.0), dataset='synthetic', category='puck')


def test_checkpoint_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(1)
    model = DBMRNet(SMALL).eval()
    path = save_checkpoint(tmp_path / 'm.safetensors', model.state_dict(), _meta())
    detector = Detector(model, _meta())
    loaded = Detector.from_checkpoint(path, 'cpu')
    assert loaded.meta.model == SMALL and loaded.threshold == 2.0
    rng = np.random.default_rng(0)
    s = render_sample(rng, 'puck', 90, 'bump')
    a, b = detector(s.rgb, s.xyz), loaded(s.rgb, s.xyz)
    assert a.score == b.score
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_a_removed_option_loads_at_its_kept_value_and_is_refused_otherwise(tmp_path):
    """Checkpoints written before an option left still load where they used the value this
    version implements; one that asked for another value fails naming the option."""
    shipped = share_dir() / 'models' / 'dbmr_default.safetensors'
    tensors = load_file(str(shipped))
    with safe_open(str(shipped), framework='pt') as handle:
        saved = json.loads(handle.metadata()['dbmr'])

    def with_option(section, name, value):
        data = json.loads(json.dumps(saved))
        data[section][name] = value
        path = tmp_path / f'{section}_{name}_{value}.safetensors'
        save_file(tensors, str(path), metadata={'dbmr': json.dumps(data)})
        return path

    for section, name, kept, other in (('model', 'head_views', 1, 4),
                                       ('model', 'score_passes', 1, 4),
                                       ('anomalies', 'stroke_share', 0.0, 0.33),
                                       ('preprocess', 'seed', 0, 5)):
        assert load_checkpoint(with_option(section, name, kept))[1] == load_checkpoint(shipped)[1]
        with pytest.raises(CheckpointError, match=f'no longer has: .*{name}'):
            load_checkpoint(with_option(section, name, other))


def test_corrupt_checkpoints_give_clear_errors(tmp_path):
    model = DBMRNet(SMALL)
    path = save_checkpoint(tmp_path / 'm.safetensors', model.state_dict(), _meta())
    with pytest.raises(CheckpointError, match='does not exist'):
        load_checkpoint(tmp_path / 'missing.safetensors')
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match='truncated.safetensors.*truncated'):
        Detector.from_checkpoint(truncated, 'cpu')
    garbage = tmp_path / 'garbage.safetensors'
    garbage.write_bytes(b'\x00' * 64)
    with pytest.raises(CheckpointError, match='garbage.safetensors'):
        Detector.from_checkpoint(garbage, 'cpu')
    other = dataclasses.replace(SMALL, embed_dim=48, num_heads=2)
    mismatched = save_checkpoint(tmp_path / 'mismatch.safetensors', model.state_dict(),
                                 _meta(other))
    with pytest.raises(CheckpointError, match='does not match'):
        Detector.from_checkpoint(mismatched, 'cpu')


def test_detector_any_resolution_batch_and_bad_input():
    torch.manual_seed(2)
    detector = Detector(DBMRNet(SMALL).eval(), _meta())
    rng = np.random.default_rng(0)
    s = render_sample(rng, 'puck', 128)
    rgb, xyz = s.rgb[:100, :120].copy(), s.xyz[:100, :120].copy()   # non-square input
    xyz[5, 5] = np.nan  # NaN is treated as an invalid pixel
    result = detector(rgb, xyz)
    assert result.anomaly_map.shape == (100, 120) and result.anomaly_map.dtype == np.float32
    assert result.map_2d.shape == result.map_3d.shape == (100, 120)
    assert result.score == pytest.approx(float(result.anomaly_map.max()), rel=0.05)
    assert result.is_anomalous == (result.score > 2.0)
    parts = {'grouping', 'network', 'scoring'}   # SMALL has no shape prior: no lap of its own
    assert set(result.timings_ms) == {'preprocess', 'model'} | parts
    assert result.timings_ms['model'] == pytest.approx(
        sum(result.timings_ms[part] for part in parts))
    batch = detector([rgb, s.rgb], [xyz, s.xyz])
    assert batch[0].score == pytest.approx(result.score, abs=1e-5)
    assert batch[1].anomaly_map.shape == (128, 128)
    # The background scores zero: for the paper's maps wherever there is no 3D point after
    # preprocessing, for the learned map beyond its margin around the part.
    part = detector.clean(s.xyz)[..., 2] != 0
    assert (batch[1].paper_map[~part] < 1e-3 * batch[1].paper_score + 1e-9).mean() > 0.95
    (top, bottom), _ = square_padding(128, 128)
    scale = (128 + top + bottom) / SMALL.image_size           # input pixels per model pixel
    far = ~binary_dilation(part, np.ones((3, 3)), int(np.ceil((SMALL.map_margin + 2) * scale)))
    assert far.sum() > 1000 and (batch[1].anomaly_map[far] < 1e-6).all()
    with pytest.raises(ValueError, match='sizes differ'):
        detector(rgb, xyz[:50])
    with pytest.raises(ValueError, match='uint8'):
        detector(rgb.astype(np.float32), xyz)


def test_presets_are_valid():
    assert PRESETS['tiny'].image_size == 224 and PRESETS['base'].embed_dim > \
        PRESETS['tiny'].embed_dim
    with pytest.raises(ValueError, match='multiple'):
        DBMRConfig(image_size=100, patch_size=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='mixed precision is tested on CUDA only')
def test_cuda_mixed_precision_within_tolerance(tmp_path):
    torch.manual_seed(3)
    model = DBMRNet(SMALL).eval()
    path = save_checkpoint(tmp_path / 'm.safetensors', model.state_dict(), _meta())
    s = render_sample(np.random.default_rng(0), 'puck', 96, 'bump')
    cpu = Detector.from_checkpoint(path, 'cpu')(s.rgb, s.xyz)
    amp = Detector.from_checkpoint(path, 'cuda', mixed_precision=True)(s.rgb, s.xyz)
    # The stated tolerance (docs/design_notes.md): image scores within 5 % relative of
    # float32 on the CPU.
    assert amp.score == pytest.approx(cpu.score, rel=0.05)


def test_scoring_head_any_size_with_token_context():
    head = ScoringHead((8, 16, 32), context_dim=6).eval()
    for size in (64, 72, 50):
        x = torch.randn(2, NUM_INPUTS, size, size)
        context = torch.randn(2, 6, 7, 7)
        logits = head(x, context)
        assert logits.shape == (2, size, size) and torch.isfinite(logits).all()
    # The context reaches every pixel: changing it changes the logits.
    x = torch.randn(1, NUM_INPUTS, 64, 64)
    assert not torch.allclose(head(x, torch.zeros(1, 6, 8, 8)), head(x, torch.ones(1, 6, 8, 8)))


def test_scoring_head_runs_channels_last_on_the_cpu_within_rounding():
    """On the CPU the head trains and infers on channels-last pixels (oneDNN's faster layout):
    its logits and gradients follow the same head in float64 to float32's rounding."""
    torch.manual_seed(0)
    head = ScoringHead((8, 16, 32), context_dim=6)
    reference = copy.deepcopy(head).double()
    layouts = []
    head.stem[0][0].register_forward_pre_hook(lambda module, args: layouts.append(
        args[0].is_contiguous(memory_format=torch.channels_last)))
    x, context = torch.randn(4, NUM_INPUTS, 48, 48), torch.randn(4, 6, 6, 6)
    for training in (True, False):
        head.train(training)
        reference.train(training)
        logits, expected = head(x, context), reference(x.double(), context.double())
        assert torch.allclose(logits.double(), expected, atol=1e-4)
        if training:
            logits.square().mean().backward()
            expected.square().mean().backward()
            for ours, theirs in zip(head.parameters(), reference.parameters()):
                assert torch.allclose(ours.grad.double(), theirs.grad, rtol=1e-3, atol=1e-5)
    assert layouts == [True, True]


def test_point_pooling_without_autograd_equals_the_training_pooling():
    """The embedding pools each group's points by amax without autograd (no indices: faster)
    and by max with it (its backward is what the reproducible runs were trained with); the
    values are the same, and with autograd a tied maximum passes its gradient to one point."""
    from dbmr_ros.model.embedding import max_over_points
    h = torch.randn(2, 5, 8, 4)
    h[0, 0, :, 0] = 1.0   # a tie over every point
    with torch.no_grad():
        pooled = max_over_points(h, keepdim=True)
    trained = h.clone().requires_grad_(True)
    values = max_over_points(trained, keepdim=True)
    assert torch.equal(pooled, values.detach())
    values.sum().backward()
    assert trained.grad[0, 0, :, 0].sum() == 1 and (trained.grad[0, 0, :, 0] == 1).sum() == 1


def test_focal_loss_is_normalised_by_the_anomalous_pixels():
    target = torch.zeros(2, 64, 64)
    target[0, :8, :8] = 1
    perfect = (target * 2 - 1) * 30
    assert float(focal_loss(perfect, target)) < 1e-6
    unsure = torch.zeros_like(target)
    # Every pixel at p = 0.5 costs 0.25 * ln 2; the sum is divided by the 64 anomalous pixels.
    expected = 0.25 * np.log(2) * target.numel() / 64
    assert float(focal_loss(unsure, target)) == pytest.approx(expected, rel=1e-5)
    # Exponent 0 is the cross-entropy, ln 2 a pixel here.
    assert float(focal_loss(unsure, target, gamma=0.0)) == pytest.approx(4 * expected, rel=1e-5)
    # Predicting 'normal' everywhere is expensive, not (as with a mean) nearly free.
    assert float(focal_loss(torch.full_like(target, -5.0), target)) > 3.0
    # No anomalous pixel: the divisor is min_share of the pixels, the loss stays finite.
    assert torch.isfinite(focal_loss(unsure, torch.zeros_like(target)))


def test_head_inputs_channels_and_background():
    rgb, xyz, _ = synthetic_batch()
    inp, _ = model_input(rgb, xyz)
    zeros = torch.zeros(inp.valid.shape)
    x = head_inputs(inp, inp.images, zeros, zeros)
    assert x.shape == (2, NUM_INPUTS, 64, 64) and torch.isfinite(x).all()
    names = [name for name, n in INPUT_CHANNELS for _ in range(n)]
    for channel, name in enumerate(names):
        if name in ('normals', 'xyz', 'valid'):
            assert (x[:, channel][~inp.valid] == 0).all(), name
    normals = x[:, [i for i, n in enumerate(names) if n == 'normals']]
    assert torch.allclose(normals.norm(dim=1)[inp.valid], torch.ones(int(inp.valid.sum())),
                          atol=1e-4)


def test_single_pass_reconstruction_is_one_unmasked_pass():
    cfg = SMALL
    torch.manual_seed(0)
    model = DBMRNet(cfg).eval()
    rgb, xyz, _ = synthetic_batch()
    inp, grp = model_input(rgb, xyz, cfg)
    embedded = model.embed(inp.images, grp)
    images, points = model.reconstruct(embedded, grp)
    expected = model.predict(*model.features(embedded, grp))
    assert torch.allclose(images, model.unpatchify(expected[0]))
    assert torch.allclose(points, expected[1])
    # Training sees every token on the unmasked steps, with the loss on all of them.
    out = DBMRNet(cfg)(inp.images, grp, torch.Generator().manual_seed(0), masked=False)
    assert not out.mask_2d.any() and float(out.losses['loss_2d'].detach()) > 0


def test_a_numpy_batch_is_preprocessed_in_parallel_as_one_by_one():
    detector = Detector(DBMRNet(SMALL).eval(), _meta())
    rng = np.random.default_rng(4)
    samples = [render_sample(rng, 'puck', 128, defect) for defect in ('bump', 'hole', None) * 2]
    rgbs, xyzs = [s.rgb for s in samples], [s.xyz for s in samples]
    together = detector._preprocess_all(rgbs, xyzs, [None] * len(samples))
    assert detector._pool is not None  # the parallel path ran
    for (rgb_s, xyz_s), rgb, xyz in zip(together, rgbs, xyzs):
        alone = preprocess(rgb, xyz, detector.meta.preprocess)
        np.testing.assert_array_equal(rgb_s, alone[0])
        np.testing.assert_array_equal(xyz_s, alone[1])
