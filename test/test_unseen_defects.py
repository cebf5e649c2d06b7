"""Defect kinds that training never draws (dbmr_ros.data.unseen_defects): each kind changes what
it claims and nothing else, on synthetic parts and on real cable_gland validation samples."""
import numpy as np
import pytest

from dbmr_ros.data.prepared import load_split
from dbmr_ros.data.preprocess import PreprocessConfig
from dbmr_ros.data.preprocess_cache import PreprocessCache
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.data.unseen_defects import (KINDS, MIN_PIXELS, MIN_VISIBLE, unseen_copies,
                                          unseen_defect)
from parts import model_size_parts

GEOMETRY_ONLY = ('bend', 'crater', 'shaved')
COLOUR_ONLY = ('scratch', 'stain')


@pytest.fixture(scope='module')
def parts():
    """Four synthetic parts at model size 96 as numpy arrays."""
    rgb, xyz = model_size_parts(4, image_size=96, render_size=128, seed=21)
    return rgb.numpy(), xyz.numpy()


def rms_radius(xyz):
    points = xyz[valid_mask(xyz)].astype(np.float64)
    return np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean())


@pytest.mark.parametrize('kind', list(KINDS))
def test_each_kind_changes_what_it_claims_and_only_on_the_part(parts, kind):
    for rgb, xyz in zip(*parts):
        before = rgb.copy(), xyz.copy()
        out_rgb, out_xyz, mask = unseen_defect(rgb, xyz, kind, np.random.default_rng(3))
        assert np.array_equal(rgb, before[0]) and np.array_equal(xyz, before[1]), 'inputs kept'
        valid = valid_mask(xyz)
        assert mask.sum() >= MIN_PIXELS and not (mask & ~valid).any()
        colour_changed = (out_rgb != rgb).any(-1)
        moved = np.linalg.norm(out_xyz.astype(np.float64) - xyz, axis=-1)
        # Nothing changes off the part, and every change is inside the ground truth or too
        # small to see (a bend's flap near its hinge, a stain's faint edge).
        assert not colour_changed[~valid].any() and not (moved[~valid] > 0).any()
        assert not (moved[~mask] >= MIN_VISIBLE * rms_radius(xyz)).any()
        if kind in GEOMETRY_ONLY:
            assert not colour_changed.any() and (moved[mask] > 0).all()
        elif kind in COLOUR_ONLY:
            assert np.array_equal(out_xyz, xyz) and colour_changed[mask].mean() > 0.5
        else:   # cut: sunk or missing points, darkened
            assert (moved[mask] > 0).all()
            assert (out_rgb[mask].astype(int).sum(-1) <= rgb[mask].astype(int).sum(-1)).all()


def test_a_bend_is_rigid_and_a_crater_and_a_facet_stay_shallow(parts):
    rgb, xyz = parts[0][0], parts[1][0]
    radius = rms_radius(xyz)
    _, bent, mask = unseen_defect(rgb, xyz, 'bend', np.random.default_rng(0))
    moved = np.linalg.norm(bent.astype(np.float64) - xyz, axis=-1) > 0
    before, after = xyz[moved].astype(np.float64), bent[moved].astype(np.float64)
    pairs = np.random.default_rng(1).integers(len(before), size=(200, 2))
    distances = [np.linalg.norm(p[a] - p[b], axis=1) for p in (before, after) for a, b in
                 [pairs.T]]
    np.testing.assert_allclose(distances[0], distances[1], atol=1e-5)
    for kind, deepest in (('crater', 0.12), ('shaved', 0.1)):
        _, out, mask = unseen_defect(rgb, xyz, kind, np.random.default_rng(2))
        shift = np.linalg.norm(out.astype(np.float64) - xyz, axis=-1)
        assert shift.max() <= deepest * radius * 1.001, kind


def test_seeded_and_every_kind_on_every_sample(parts):
    a, b = unseen_copies(*parts, seed=4), unseen_copies(*parts, seed=4)
    for x, y in zip(a[:3], b[:3]):
        assert np.array_equal(x, y)
    assert a[3] == b[3] == list(KINDS) * len(parts[0])
    c = unseen_copies(*parts, seed=5, copies=2)
    assert len(c[3]) == 2 * len(KINDS) * len(parts[0])
    assert not np.array_equal(a[2], c[2][:len(a[2])])


def test_refuses_a_sample_without_points(parts):
    with pytest.raises(ValueError, match='valid points'):
        unseen_defect(parts[0][0], np.zeros_like(parts[1][0]), 'cut', np.random.default_rng(0))


def test_copies_leave_out_a_sample_too_small_for_any_defect(parts):
    rgb, xyz = parts[0][:2].copy(), parts[1][:2].copy()
    xyz[1] = 0
    xyz[1, 40, 40:43] = xyz[0, 40, 40:43]    # three points: too few for a defect
    _, _, masks, kinds = unseen_copies(rgb, xyz, seed=0)
    assert kinds == list(KINDS) and len(masks) == len(KINDS)     # the first sample's only
    empty = unseen_copies(rgb[1:], xyz[1:], seed=0)
    assert empty[0].shape == (0, 96, 96, 3) and empty[2].shape == (0, 96, 96) and empty[3] == []


def test_every_kind_draws_on_real_cable_gland(mvtec_root):
    cfg = PreprocessConfig()
    rgb, xyz = load_split('mvtec3d', mvtec_root, 'cable_gland', 'validation', cfg,
                          PreprocessCache(cfg))[:2]
    out_rgb, out_xyz, masks, kinds = unseen_copies(rgb[:3], xyz[:3], seed=0)
    radius = rms_radius(xyz[0])
    for i, kind in enumerate(kinds):
        sample = i // len(KINDS)
        assert masks[i].sum() >= MIN_PIXELS, kind
        shift = np.linalg.norm(out_xyz[i].astype(np.float64) - xyz[sample], axis=-1)[masks[i]]
        if kind in GEOMETRY_ONLY:   # millimetres on a part of a few centimetres
            assert 0.0003 < shift.max() < 0.01 and shift.max() < 0.5 * radius, (kind, shift.max())
