"""The classic FPFH + PatchCore baseline (benchmarks/baseline_fpfh_patchcore.py): its features
equal Open3D's, and it separates defective from good synthetic parts end to end."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'
sys.path.insert(0, str(BENCHMARKS))
import baseline_fpfh_patchcore as baseline  # noqa: E402

# Open3D 0.20's normals and FPFH of 80 points on a wavy surface, made once with Open3D (not a
# dependency) by:
#   xy = np.random.default_rng(0).uniform(-0.02, 0.02, size=(80, 2))
#   points = np.column_stack([xy, 0.4 + 0.004 * np.sin(xy[:, 0] * 300) * np.cos(xy[:, 1] * 200)])
#   cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(points))
#   cloud.estimate_normals(open3d.geometry.KDTreeSearchParamHybrid(radius=1.0, max_nn=8))
#   fpfh = open3d.pipelines.registration.compute_fpfh_feature(
#       cloud, open3d.geometry.KDTreeSearchParamHybrid(radius=1.0, max_nn=12)).data.T
REFERENCE = Path(__file__).resolve().parent / 'data' / 'open3d_fpfh.npz'


def test_fpfh_equals_open3d_given_its_normals():
    ref = np.load(REFERENCE)
    ours = baseline.fpfh(ref['points'], ref['normals'], int(ref['fpfh_neighbours']))
    assert np.abs(ours - ref['fpfh']).max() < 1e-9 * np.abs(ref['fpfh']).max()
    # Our normals are Open3D's up to their sign, which we turn toward the camera.
    normals = baseline.estimate_normals(ref['points'], int(ref['normal_neighbours']))
    assert np.abs((normals * ref['normals']).sum(-1)).min() > 1 - 1e-9
    assert ((normals * ref['points']).sum(-1) < 0).all()


def test_fpfh_of_a_plane_and_under_a_rigid_motion():
    """On a plane every pair feature is zero (bin 5 of each angle); a rotation and translation
    of points and normals leaves every histogram as it was."""
    rng = np.random.default_rng(1)
    plane = np.column_stack([rng.uniform(-0.02, 0.02, (300, 2)), np.full(300, 0.4)])
    features = baseline.fpfh(plane, np.tile([0.0, 0.0, -1.0], (300, 1)))
    expected = np.zeros(33)
    expected[[5, 16, 27]] = 200.0   # 100 from the point's own histogram, 100 from its neighbours
    assert np.allclose(features, expected)

    ref = np.load(REFERENCE)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    moved = baseline.fpfh(ref['points'] @ rotation.T + [0.1, -0.2, 0.3],
                          ref['normals'] @ rotation.T)
    assert np.allclose(moved, baseline.fpfh(ref['points'], ref['normals']), atol=1e-6)


def test_patchcore_scores_the_farthest_patch():
    """The image score is the largest nearest-neighbour distance, re-weighted; a patch that is
    in the bank scores zero."""
    bank = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    patches = torch.zeros(baseline.PATCH_GRID ** 2, 2)
    image_score, patch_scores = baseline.score(patches, bank)
    assert image_score == 0.0 and patch_scores.shape == (28, 28) and not patch_scores.any()
    patches[7] = torch.tensor([0.0, 3.0])
    image_score, patch_scores = baseline.score(patches, bank)
    assert patch_scores.flatten()[7] == pytest.approx(2.0)
    assert 0.0 < image_score < 2.0
    assert torch.equal(baseline.coreset(bank, 0.5), bank[[0, 3]])


def test_baseline_localises_synthetic_defects(synthetic_root):
    """End to end on the synthetic parts: its maps find the defects (the colour-only ones are
    invisible to a geometric feature, so the image score is not asserted)."""
    out = subprocess.run([sys.executable, str(BENCHMARKS / 'baseline_fpfh_patchcore.py'),
                          '--data-root', str(synthetic_root), '--category', 'puck'],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    row = next(line for line in out.stdout.splitlines() if line.startswith('| baseline'))
    i_auroc, p_auroc, aupro_30, _ = (float(c) for c in row.strip('|').split('|')[1:])
    assert 0.0 <= i_auroc <= 1.0 and p_auroc > 0.85 and aupro_30 > 0.5, out.stdout
    defects = {p.name for p in (synthetic_root / 'puck' / 'test').iterdir()} - {'good'}
    for defect in defects:  # a row per defect type, its sample against the good ones
        assert f'| baseline, {defect} (1) vs good |' in out.stdout
