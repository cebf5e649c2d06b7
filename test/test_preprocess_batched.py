"""The fixed-shape batched preprocessing (`preprocess_batched`) against the numpy reference.

Stated tolerance, on real cable_gland frames (all 164 measured when it was written: 132
identical, the largest difference 14 points, 0.06 % of the part): each frame is flagged exact,
its kept points differ from the reference's in at most 0.1 % of them, model-size RGB within 1
grey level. A frame the fixed bounds do not cover is flagged, and the Detector redoes it with the
numpy reference. A frame's result does not depend on the batch it came in. A Detector's image
scores agree with the numpy path's within 1e-3 relative.
"""
import dataclasses

import numpy as np
import pytest
import torch

from dbmr_ros.data import open_dataset, PreprocessConfig, preprocess
from dbmr_ros.data import preprocess_batched
from dbmr_ros.data.preprocess import clean_point_cloud
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.detector import Detector
from dbmr_ros.resources import share_dir
from frames import tum_frame

MAX_DIFFERENT_POINTS = 1e-3  # of the reference's kept points


def _cable_gland(mvtec_root):
    """Real frames of every split and defect (a batch of one frame size)."""
    picked = []
    for split, step in (('train', 20), ('validation', 6), ('test', 4)):
        picked += open_dataset('mvtec3d', mvtec_root, 'cable_gland', split)[::step]
    samples = [ref.load() for ref in picked]
    return ([ref.name for ref in picked], np.stack([s.rgb for s in samples]),
            np.stack([s.xyz for s in samples]))


def test_batched_preprocessing_agrees_with_numpy(mvtec_root):
    cfg = PreprocessConfig()
    names, rgb, xyz = _cable_gland(mvtec_root)
    cleaned, exact = preprocess_batched.clean_point_clouds(torch.from_numpy(xyz), cfg)
    assert exact.all(), [n for n, e in zip(names, exact) if not e]
    for name, frame_rgb, frame_xyz, got in zip(names, rgb, xyz, cleaned.numpy()):
        expected = clean_point_cloud(frame_xyz, cfg)
        kept = valid_mask(expected)
        assert kept.sum() > 5000, name  # a part: a real comparison
        assert (valid_mask(got) != kept).sum() <= MAX_DIFFERENT_POINTS * kept.sum(), name
        same = valid_mask(got) & kept
        np.testing.assert_array_equal(got[same], expected[same], err_msg=name)
    rgb_s, _, _ = preprocess_batched.preprocess_batch(torch.from_numpy(rgb),
                                                      torch.from_numpy(xyz), cfg)
    for i, name in enumerate(names):
        expected_rgb, _ = preprocess(rgb[i], xyz[i], cfg, cleaned[i].numpy())
        assert np.abs(rgb_s[i].numpy().astype(int) - expected_rgb).max() <= 1, name


def test_a_frame_does_not_depend_on_its_batch(mvtec_root):
    cfg = PreprocessConfig()
    _, rgb, xyz = _cable_gland(mvtec_root)
    batch = preprocess_batched.preprocess_batch(torch.from_numpy(rgb[:5]),
                                                torch.from_numpy(xyz[:5]), cfg)
    for i in (0, 3):
        alone = preprocess_batched.preprocess_batch(torch.from_numpy(rgb[i:i + 1]),
                                                    torch.from_numpy(xyz[i:i + 1]), cfg)
        for a, b in zip(alone, batch):
            assert torch.equal(a[0], b[i])


def test_frames_beyond_the_bounds_are_flagged_and_redone(rgbd_frames, mvtec_root):
    """The Kinect frame's points are too sparse for the configured stride (the reference clusters
    it at stride 1): flagged, and the Detector's result is the numpy reference's."""
    rgb, xyz = tum_frame(rgbd_frames)
    cfg = dataclasses.replace(PreprocessConfig(), max_depth=2.0)
    _, exact = preprocess_batched.clean_point_clouds(torch.from_numpy(xyz)[None], cfg)
    assert not exact[0]
    loaded = Detector.from_checkpoint(share_dir() / 'models' / 'dbmr_default.safetensors', 'cpu')
    meta = dataclasses.replace(loaded.meta, preprocess=cfg)
    detector = Detector(loaded.model, meta, 'cpu', preprocessing='torch')
    result = detector(rgb, xyz)
    rgb_s, xyz_s = preprocess(rgb, xyz, cfg)
    expected = detector.score_prepared(rgb_s[None], xyz_s[None], on_device=True)
    assert result.score == expected.score[0].item()


def test_a_result_does_not_depend_on_the_images_memory_layout(mvtec_root):
    """Torch image ops may return (S, S, 3) images laid out channel by channel, numpy row by
    row; the network's kernels are chosen by layout, and the two once scored the same pixels one
    float32 step apart. The same values in either layout: the same result, bit for bit."""
    sample = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'validation')[0].load()
    detector = Detector.from_checkpoint(share_dir() / 'models' / 'dbmr_default.safetensors',
                                        'cpu', preprocessing='torch')
    rgb_s, xyz_s = map(torch.from_numpy, preprocess(sample.rgb, sample.xyz,
                                                    detector.meta.preprocess))
    by_channel = rgb_s.permute(2, 0, 1).contiguous().permute(1, 2, 0)[None]
    by_row = rgb_s.contiguous()[None]
    assert not by_channel.is_contiguous() and torch.equal(by_channel, by_row)
    first, second = (detector.score_prepared(images, xyz_s[None], on_device=True)
                     for images in (by_channel, by_row))
    assert torch.equal(first.score, second.score)
    assert torch.equal(first.anomaly_map, second.anomaly_map)


def test_a_sparse_frame_beside_a_flagged_one_is_still_refused(rgbd_frames):
    """A batch where one frame is redone step by step and another, exact, keeps too few points:
    the stand-in the network saw for it must not turn into a result."""
    rgb, xyz = tum_frame(rgbd_frames)
    sparse = np.zeros_like(xyz)
    v, u = np.mgrid[0:4, 0:4].astype(np.float32) * 1e-4  # 16 points 0.1 mm apart: exact
    sparse[200:204, 300:304] = np.stack([u, v, np.ones_like(u)], -1)
    cfg = dataclasses.replace(PreprocessConfig(), max_depth=2.0)
    _, exact = preprocess_batched.clean_point_clouds(torch.from_numpy(np.stack([xyz, sparse])),
                                                     cfg)
    assert exact.tolist() == [False, True]
    loaded = Detector.from_checkpoint(share_dir() / 'models' / 'dbmr_default.safetensors', 'cpu')
    detector = Detector(loaded.model, dataclasses.replace(loaded.meta, preprocess=cfg), 'cpu',
                        preprocessing='torch')
    with pytest.raises(ValueError, match='valid points after preprocessing'):
        detector([rgb, rgb], [xyz, sparse])


def test_components_flag_what_the_rounds_do_not_reach():
    """A serpentine one pixel wide is one component when the rounds suffice, and a frame whose
    components have not converged is flagged, not silently split."""
    size = 41
    path = np.zeros((size, size), dtype=bool)
    path[::2] = True
    path[1::4, -1] = path[3::4, 0] = True
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) * 0.001
    grid = torch.from_numpy(np.stack([cols, rows, np.full_like(rows, 0.5)], -1) *
                            path[..., None])[None]
    valid = torch.from_numpy(path)[None]
    labels, converged = preprocess_batched.grid_components(grid, valid, eps=0.0012)
    assert converged.all()
    assert (labels[valid] == labels[valid][0]).all() and (labels[~valid] == size * size).all()
    rounds = preprocess_batched.COMPONENT_ROUNDS
    try:
        preprocess_batched.COMPONENT_ROUNDS = 2
        _, converged = preprocess_batched.grid_components(grid, valid, eps=0.0012)
    finally:
        preprocess_batched.COMPONENT_ROUNDS = rounds
    assert not converged.any()


def test_plane_removal_without_border_points_removes_nothing():
    """Fewer than 3 valid border points: no plane, as the reference."""
    xyz = np.zeros((1, 60, 60, 3), np.float32)
    xyz[0, 20:40, 20:40] = (0.0, 0.0, 0.5)
    points = torch.from_numpy(xyz)
    mask = preprocess_batched.support_plane_masks(points, valid_mask(points), PreprocessConfig())
    assert not mask.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_graph_of_the_batched_preprocessing_matches_the_cpu(mvtec_root):
    """Replayed as a CUDA graph (twice, so the second replay reuses the recording): the same
    flags, kept points within the stated tolerance of the CPU's, RGB within 1 grey level."""
    from dbmr_ros.cuda_graphs import GraphedFunction
    cfg = PreprocessConfig()
    names, rgb, xyz = _cable_gland(mvtec_root)
    expected = preprocess_batched.preprocess_batch(torch.from_numpy(rgb), torch.from_numpy(xyz),
                                                   cfg)
    graphed = GraphedFunction(lambda a, b: preprocess_batched.preprocess_batch(a, b, cfg),
                              'test preprocessing')
    for _ in range(2):
        got = [t.cpu() for t in graphed(torch.from_numpy(rgb).cuda(),
                                        torch.from_numpy(xyz).cuda())]
    assert graphed.usable, 'the recording failed'
    assert torch.equal(got[2], expected[2])
    for i, name in enumerate(names):
        kept = valid_mask(expected[1][i])
        assert (valid_mask(got[1][i]) != kept).sum() <= MAX_DIFFERENT_POINTS * kept.sum(), name
        assert (got[0][i].int() - expected[0][i].int()).abs().max() <= 1, name


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_detector_refuses_an_empty_cloud_and_scores_the_next(mvtec_root):
    """On CUDA the network's graph replays before the point counts are read back: a cloud the
    preprocessing empties is refused as on the CPU, and the next frame scores as before."""
    detector = Detector.from_checkpoint(share_dir() / 'models' / 'dbmr_default.safetensors',
                                        'cuda')
    sample = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')[0].load()
    before = detector(sample.rgb, sample.xyz)
    with pytest.raises(ValueError, match='0 valid points'):
        detector(sample.rgb, np.zeros_like(sample.xyz))
    after = detector(sample.rgb, sample.xyz)
    assert after.score == before.score
    assert set(after.timings_ms) >= {'preprocess', 'model'}


def test_detector_scores_agree_between_preprocessings(mvtec_root):
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    numpy_path = Detector.from_checkpoint(model, 'cpu', preprocessing='numpy')
    torch_path = Detector(numpy_path.model, numpy_path.meta, 'cpu', preprocessing='torch')
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')[::7]
    samples = [ref.load() for ref in refs]
    rgb, xyz = [s.rgb for s in samples], [s.xyz for s in samples]
    for a, b in zip(numpy_path(rgb, xyz), torch_path(rgb, xyz)):
        assert b.score == pytest.approx(a.score, rel=1e-3)
        assert b.paper_score == pytest.approx(a.paper_score, rel=1e-3)
        assert np.abs(b.anomaly_map - a.anomaly_map).max() <= 1e-3 * a.anomaly_map.max()


def test_unknown_preprocessing_is_refused():
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    with pytest.raises(ValueError, match='preprocessing'):
        Detector.from_checkpoint(model, 'cpu', preprocessing='opencv')


def test_a_cloud_without_points_is_refused_alike_on_both_paths():
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    for preprocessing in ('numpy', 'torch'):
        detector = Detector.from_checkpoint(model, 'cpu', preprocessing=preprocessing)
        for xyz in (np.zeros((100, 120, 3), np.float32), np.full((100, 120, 3), np.nan)):
            with pytest.raises(ValueError, match='0 valid points'):
                detector(np.zeros((100, 120, 3), np.uint8), xyz)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_detector_agrees_with_the_cpu_on_real_frames(mvtec_root):
    """The whole GPU path (torch preprocessing on the device, the network in float32 or bf16,
    maps resized there) against the CPU path (numpy preprocessing, float32), one batched call
    each. Stated tolerance: scores and maps (probabilities) within 0.01 in float32 and 0.05 in
    bf16, absolute."""
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')[::4]
    samples = [ref.load() for ref in refs]
    rgb, xyz = [s.rgb for s in samples], [s.xyz for s in samples]
    expected = Detector.from_checkpoint(model, 'cpu')(rgb, xyz)
    for mixed_precision, tolerance in ((False, 0.01), (True, 0.05)):
        gpu = Detector.from_checkpoint(model, 'cuda', mixed_precision=mixed_precision)
        assert gpu.preprocess_on_device
        for ref, a, b in zip(refs, expected, gpu(rgb, xyz)):
            score_error = abs(b.score - a.score)
            map_error = float(np.abs(b.anomaly_map - a.anomaly_map).max())
            print(f'{ref.name} bf16={mixed_precision}: score {a.score:.4f} vs {b.score:.4f}, '
                  f'largest map difference {map_error:.4f}')
            assert score_error <= tolerance and map_error <= tolerance, ref.name
            assert b.anomaly_map.shape == a.anomaly_map.shape
