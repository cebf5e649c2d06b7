"""The torch preprocessing (the GPU path) against the numpy reference.

Stated tolerance: the cleaned cloud and the model-size points are identical (the same points
kept, bit for bit); the model-size RGB differs by at most 1 grey level (OpenCV's bicubic works
in fixed point); a Detector's image scores agree within 1e-3 relative.
"""
import dataclasses

import numpy as np
import pytest
import torch

from dbmr_ros.data import open_dataset, PreprocessConfig, preprocess
from dbmr_ros.data import preprocess_torch
from dbmr_ros.data.preprocess import clean_point_cloud
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.data.synthetic import render_sample
from dbmr_ros.detector import Detector
from dbmr_ros.resources import share_dir
from frames import tum_frame


def _frames(mvtec_root, rgbd_frames):
    """(name, rgb, xyz, config): real cable_gland frames of every split and defect, the real
    640x480 Kinect frame (padded to a square) and a synthetic part with NaN for invalid points."""
    cfg = PreprocessConfig()
    for split, step in (('test', 5), ('validation', 11)):
        for ref in open_dataset('mvtec3d', mvtec_root, 'cable_gland', split)[::step]:
            sample = ref.load()
            yield f'{split}/{ref.name}', sample.rgb, sample.xyz, cfg
    rgb, xyz = tum_frame(rgbd_frames)
    yield 'TUM', rgb, xyz, dataclasses.replace(cfg, max_depth=2.0)
    sample = render_sample(np.random.default_rng(3), 'puck', 300, 'hole')
    xyz = sample.xyz.copy()
    xyz[~valid_mask(xyz)] = np.nan
    yield 'synthetic', sample.rgb, xyz, dataclasses.replace(cfg, dbscan_eps=0.009)


def test_torch_preprocessing_matches_numpy(mvtec_root, rgbd_frames):
    """Also the check of numpy's RANSAC stopping at the first hypothesis every scored point
    supports: the torch version scores all of them and takes the first best."""
    for name, rgb, xyz, cfg in _frames(mvtec_root, rgbd_frames):
        cleaned = clean_point_cloud(xyz, cfg)
        got = preprocess_torch.clean_point_cloud(torch.from_numpy(xyz), cfg).numpy()
        assert valid_mask(cleaned).sum() > 500, name  # something kept: a real comparison
        np.testing.assert_array_equal(got, cleaned, err_msg=name)
        rgb_s, xyz_s = preprocess(rgb, xyz, cfg, cleaned)
        rgb_t, xyz_t = preprocess_torch.preprocess(torch.from_numpy(rgb), torch.from_numpy(xyz),
                                                   cfg)
        np.testing.assert_array_equal(xyz_t.numpy(), xyz_s, err_msg=name)
        assert np.abs(rgb_t.numpy().astype(int) - rgb_s).max() <= 1, name


def test_grid_components_join_across_depth_jumps_within_eps_only():
    """As the numpy grid clustering: a patch beyond an invalid gap joins when within eps in 3D,
    one 50 mm behind stays out, and a serpentine is one component."""
    xyz = np.zeros((20, 40, 3), dtype=np.float32)
    rows, cols = np.mgrid[0:20, 0:40].astype(np.float32) * 0.001
    xyz[..., 0], xyz[..., 1], xyz[..., 2] = cols, rows, 0.5
    xyz[:, 18:20] = 0
    xyz[:, 20:28, 2] = 0.5 + 0.004
    xyz[:, 30:, 2] = 0.5 + 0.05
    xyz[:, 28:30] = 0
    points = torch.from_numpy(xyz)
    keep = preprocess_torch.largest_grid_cluster(points, valid_mask(points), eps=0.006)
    assert keep[:, :18].all() and keep[:, 20:28].all() and not keep[:, 30:].any()
    keep = preprocess_torch.largest_grid_cluster(points, valid_mask(points), eps=0.0015)
    assert keep[:, :18].all() and not keep[:, 20:].any()

    size = 41  # a serpentine one pixel wide: the longest path label propagation can meet
    path = np.zeros((size, size), dtype=bool)
    path[::2] = True
    path[1::4, -1] = path[3::4, 0] = True
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) * 0.001
    grid = torch.from_numpy(np.stack([cols, rows, np.full_like(rows, 0.5)], -1) *
                            path[..., None])
    labels = preprocess_torch.grid_components(grid, torch.from_numpy(path), eps=0.0012)
    on_path = torch.from_numpy(path)
    assert (labels[on_path] == 0).all() and (labels[~on_path] == size * size).all()


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


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_preprocessing_matches_the_cpu(mvtec_root, rgbd_frames):
    for name, rgb, xyz, cfg in _frames(mvtec_root, rgbd_frames):
        cpu = preprocess_torch.preprocess(torch.from_numpy(rgb), torch.from_numpy(xyz), cfg)
        gpu = preprocess_torch.preprocess(torch.from_numpy(rgb).cuda(),
                                          torch.from_numpy(xyz).cuda(), cfg)
        assert gpu[1].is_cuda, name
        np.testing.assert_array_equal(gpu[1].cpu().numpy(), cpu[1].numpy(), err_msg=name)
        assert (gpu[0].cpu().int() - cpu[0].int()).abs().max() <= 1, name


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
