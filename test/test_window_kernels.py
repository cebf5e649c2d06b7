"""The Triton window-search kernels (`data/window_kernels.py`) against the torch versions
(`data/window_search.py`), without and with a GPU.

Without one, Triton's interpreter runs the kernels on the CPU (TRITON_INTERPRET=1, set before
Triton is imported: a process of its own) and Triton compiles them for an H100 and an A100.
The stated result: the same pixels as the torch versions, on real cable_gland frames.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dbmr_ros.data import open_dataset, PreprocessConfig
from dbmr_ros.data import preprocess_batched, window_search
from dbmr_ros.data.sample import valid_mask
from triton_checks import assert_triton_not_loaded, compile_without_gpu, require_triton

require_triton()  # skips the module where Triton is missing (fails under CI)

INTERPRETED = r'''
import sys
import torch
from dbmr_ros.data import window_kernels, window_search
cases = torch.load(sys.argv[1], weights_only=True)
results = {}
for name, (xyz, valid, grid, grid_valid, kept, stride, eps) in cases.items():
    far = torch.where(kept[..., None], grid, 1e6)
    results[name] = (window_kernels.touching_search(grid, grid_valid, eps,
                                                    window_search.JOIN_RADIUS)(kept),
                     window_kernels.near(xyz, valid, far, stride, eps, window_search.NEAR_RADIUS))
torch.save(results, sys.argv[2])
'''


def _cases(mvtec_root) -> dict:
    """Real frames after the plane removal, with each frame's largest grid component as the
    kept pixels: a batch of two 120 x 120 crops of the part and its rim (a side that the stride
    does not divide) and one 123 x 123 crop (one it divides: the nearest grid row is clamped).
    Small: the interpreter runs a kernel's window loop in Python."""
    cfg = PreprocessConfig()
    eps, stride = cfg.dbscan_eps, cfg.dbscan_stride
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')
    xyz = torch.from_numpy(np.stack([refs[i].load().xyz for i in (0, len(refs) - 1)]))
    valid = valid_mask(xyz)
    valid &= ~preprocess_batched.support_plane_masks(xyz, valid, cfg)
    cases = {}
    for name, frames, side in (('batch of two', slice(0, 2), 120), ('clamped', slice(1, 2), 123)):
        crop = (frames, slice(200, 200 + side), slice(200, 200 + side))
        x, v = xyz[crop].contiguous(), valid[crop].contiguous()
        grid, grid_valid = x[:, ::stride, ::stride].contiguous(), v[:, ::stride, ::stride]
        labels, _ = preprocess_batched.grid_components(grid, grid_valid, eps)
        kept = preprocess_batched._largest(labels, grid_valid)
        assert kept.sum() > 300 and v.sum() > 2 * kept.sum()  # a part, and pixels to check
        cases[name] = (x, v, grid, grid_valid, kept, stride, eps)
    return cases


def test_kernels_find_the_torch_versions_pixels_in_the_interpreter(mvtec_root, tmp_path):
    cases = _cases(mvtec_root)
    torch.save(cases, tmp_path / 'cases.pt')
    result = subprocess.run(
        [sys.executable, '-c', INTERPRETED, str(tmp_path / 'cases.pt'), str(tmp_path / 'out.pt')],
        env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    kernel_results = torch.load(tmp_path / 'out.pt', weights_only=True)
    for name, (xyz, valid, grid, grid_valid, kept, stride, eps) in cases.items():
        touching, near = kernel_results[name]
        expected_touching = window_search.touching_search(grid, grid_valid, eps)(kept)
        expected_near = window_search.near_cluster(xyz, valid, grid, kept, stride, eps)
        assert expected_touching.any() and expected_near.any()
        assert torch.equal(touching, expected_touching), name
        assert torch.equal(near, expected_near), name


@pytest.mark.parametrize('arch', [90, 80])
def test_kernels_compile_for_a_gpu_without_one(arch):
    """Triton compiles both kernels to cubins for an H100 (sm_90) and an A100 (sm_80) with the
    launchers' options, and the PTX has no fused multiply-add (the equality with the torch
    versions relies on it)."""
    from dbmr_ros.data.window_kernels import _near_kernel, _OPTIONS, _touching_kernel
    common = {'xyz': '*fp32', 'valid': '*i8', 'out': '*i8', 'pixels': 'i32', 'height': 'i32',
              'width': 'i32', 'eps2': 'fp32', 'RADIUS': 'constexpr', 'BLOCK': 'constexpr'}
    kernels = ((_touching_kernel, {**common, 'kept': '*i8'}, window_search.JOIN_RADIUS),
               (_near_kernel, {**common, 'grid': '*fp32', 'grid_height': 'i32',
                               'grid_width': 'i32', 'stride': 'i32'}, window_search.NEAR_RADIUS))
    for kernel, types, radius in kernels:
        options = dict(_OPTIONS)
        compile_without_gpu(kernel, {name: types[name] for name in kernel.arg_names},
                            {'RADIUS': radius, 'BLOCK': options.pop('BLOCK')}, options, arch)


def test_the_cpu_path_never_loads_triton():
    assert_triton_not_loaded('import torch\n'
                             'from dbmr_ros.data import PreprocessConfig, preprocess_batched\n'
                             'preprocess_batched.clean_point_clouds(torch.rand(1, 60, 60, 3), '
                             'PreprocessConfig())')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_kernels_find_the_torch_versions_pixels(mvtec_root):
    """Compiled for the GPU at hand: the torch versions' pixels (run on the CPU)."""
    assert window_search._kernels(torch.device('cuda')) is not None
    for name, (xyz, valid, grid, grid_valid, kept, stride, eps) in _cases(mvtec_root).items():
        expected_touching = window_search.touching_search(grid, grid_valid, eps)(kept)
        expected_near = window_search.near_cluster(xyz, valid, grid, kept, stride, eps)
        cuda = [t.cuda() for t in (xyz, valid, grid, grid_valid, kept)]
        touching = window_search.touching_search(cuda[2], cuda[3], eps)(cuda[4])
        near = window_search.near_cluster(cuda[0], cuda[1], cuda[2], cuda[4], stride, eps)
        assert torch.equal(touching.cpu(), expected_touching), name
        assert torch.equal(near.cpu(), expected_near), name
