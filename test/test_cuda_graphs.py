"""Replayed CUDA graphs (`dbmr_ros.cuda_graphs`) and the Detector's graph path.

Stated tolerance: a replayed Detector's scores and maps (probabilities) are within 0.01 of the
same Detector run eagerly in float32 and within 0.05 in bf16 (the GPU-vs-CPU tolerances of
`test_preprocess_batched`): the computation is the same, but the library may pick other kernels
for the recorded shapes (all pixels where eager code takes the valid ones). On the CPU the
recorded form gives the eager maps within 1e-6.
"""
import logging

import numpy as np
import pytest
import torch

from dbmr_ros.data import open_dataset, preprocess
from dbmr_ros.data.sample import valid_mask
from dbmr_ros.detector import Detector
from dbmr_ros.cuda_graphs import capturing, GraphedFunction, run_beside
from dbmr_ros.resources import share_dir

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')


def _affine(x, y, scale):
    return x * scale + y.sum(-1, keepdim=True), x.abs().amax(-1)


def test_cpu_tensors_run_eagerly():
    graphed = GraphedFunction(_affine, 'affine')
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    got = graphed(x, y, scale=2.0)
    want = _affine(x, y, 2.0)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not graphed._graphs and not capturing()


def test_the_recorded_form_computes_the_eager_maps(monkeypatch, mvtec_root):
    """What a graph records (no value read back: every pixel kept, no point count check, the
    shape prior's descriptors over the whole image) gives the eager maps; checked on the CPU by
    letting the model code believe it is recorded."""
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    detector = Detector.from_checkpoint(model, 'cpu')
    assert detector.model.shape_prior is not None   # the shipped model's prior is recorded too
    sample = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')[7].load()
    rgb_s, xyz_s = (torch.from_numpy(a[None]) for a in preprocess(
        sample.rgb, sample.xyz, detector.meta.preprocess))
    with torch.inference_mode():
        eager = detector._model_maps(rgb_s, xyz_s)
        for module in ('inputs', 'pixels', 'local_shape'):
            monkeypatch.setattr(f'dbmr_ros.model.{module}.capturing', lambda: True)
        recorded_form = detector._model_maps(rgb_s, xyz_s)
    for a, b in zip(eager, recorded_form):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def _forked(x, y):
    """x's part beside the current stream, y's on it, joined before they meet."""
    doubled, join = run_beside(x.device, lambda t: (t * 2).cumsum(-1), x)
    shifted = (y + 1).cumsum(-1)
    join()
    return doubled + shifted


def test_run_beside_runs_inline_off_cuda():
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(_forked(x, y), (x * 2).cumsum(-1) + (y + 1).cumsum(-1))


@needs_cuda
def test_work_beside_the_stream_is_recorded_and_replayed():
    """A side stream forked from and joined to the capturing stream: the graph keeps both
    branches, and each replay follows the new inputs (large enough to overlap)."""
    graphed = GraphedFunction(_forked, 'forked')
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = (torch.randn(64, 4096, generator=generator).cuda() for _ in range(2))
        got = graphed(x, y).clone()
        torch.testing.assert_close(got, (x * 2).cumsum(-1) + (y + 1).cumsum(-1))
    assert graphed.usable and len(graphed._graphs) == 1


@needs_cuda
def test_replays_follow_new_inputs_and_signatures():
    graphed = GraphedFunction(_affine, 'affine', max_graphs=2)
    generator = torch.Generator().manual_seed(0)
    for shape, scale in (((3, 4), 2.0), ((3, 4), 2.0), ((5, 4), 2.0), ((3, 4), 3.0)):
        x, y = (torch.randn(shape, generator=generator).cuda() for _ in range(2))
        got = [t.clone() for t in graphed(x, y, scale=scale)]
        want = _affine(x, y, scale)
        assert all(torch.allclose(a, b) for a, b in zip(got, want))
    assert graphed.usable and len(graphed._graphs) == 2  # three signatures, the oldest dropped


@needs_cuda
@pytest.mark.parametrize('mixed_precision,tolerance', [(False, 0.01), (True, 0.05)])
def test_detector_graph_matches_eager_on_real_frames(mvtec_root, mixed_precision, tolerance):
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    graphed = Detector.from_checkpoint(model, 'cuda', mixed_precision=mixed_precision)
    eager = Detector(graphed.model, graphed.meta, 'cuda', mixed_precision, cuda_graphs=False)
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')[::3]
    samples = [ref.load() for ref in refs]
    rgb, xyz = [s.rgb for s in samples], [s.xyz for s in samples]
    one_by_one = [graphed(r, x) for r, x in zip(rgb, xyz)]  # one graph, replayed per frame
    batched = graphed(rgb, xyz)                              # a second graph, this batch size
    assert graphed._graphed.usable and len(graphed._graphed._graphs) == 2
    assert 'network' not in batched[0].timings_ms and batched[0].timings_ms['model'] > 0
    for ref, want, single, batch in zip(refs, eager(rgb, xyz), one_by_one, batched):
        for got in (single, batch):
            map_error = float(np.abs(got.anomaly_map - want.anomaly_map).max())
            print(f'{ref.name} bf16={mixed_precision}: score {want.score:.6f} eager, '
                  f'{got.score:.6f} graph; largest map difference {map_error:.2e}')
            assert abs(got.score - want.score) <= tolerance and map_error <= tolerance, ref.name


@needs_cuda
def test_detector_graph_refuses_a_cloud_without_enough_points_and_goes_on(mvtec_root):
    """The point count check runs before the replay (the graph itself cannot raise)."""
    model = share_dir() / 'models' / 'dbmr_default.safetensors'
    detector = Detector.from_checkpoint(model, 'cuda')
    sample = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')[0].load()
    rgb_s, xyz_s = (a[None] for a in preprocess(sample.rgb, sample.xyz, detector.meta.preprocess))
    first = detector.score_prepared(rgb_s, xyz_s)
    sparse = np.zeros_like(xyz_s)
    rows, cols = np.nonzero(valid_mask(xyz_s[0]))
    sparse[0, rows[:10], cols[:10]] = xyz_s[0, rows[:10], cols[:10]]
    with pytest.raises(ValueError, match='has 10 valid points'):
        detector.score_prepared(rgb_s, sparse)
    again = detector.score_prepared(rgb_s, xyz_s)
    assert detector._graphed.usable and len(detector._graphed._graphs) == 1
    assert torch.equal(again.anomaly_map, first.anomaly_map)


@needs_cuda
def test_a_function_that_reads_a_value_back_falls_back_to_eager(caplog):
    def reads_back(x):
        return x * float(x.max())
    graphed = GraphedFunction(reads_back, 'reads back')
    x = torch.rand(4, device='cuda')
    with caplog.at_level(logging.WARNING):
        got = graphed(x)
    assert torch.allclose(got, reads_back(x)) and not graphed.usable
    assert 'reads back' in caplog.text
    assert torch.allclose(graphed(x + 1), reads_back(x + 1))  # eager from now on
    assert torch.equal(torch.arange(3, device='cuda') * 2, torch.tensor([0, 2, 4], device='cuda'))
