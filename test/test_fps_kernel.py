"""The Triton farthest point sampling kernel (`model/fps_kernel.py`) without and with a GPU.

Without one, Triton's interpreter runs the kernel on the CPU (TRITON_INTERPRET=1, set before
Triton is imported: a process of its own) and Triton compiles it for an H100 and an A100 (its
bundled ptxas, no driver). With one, the compiled kernel runs.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from dbmr_ros.data import open_dataset, preprocess, PreprocessConfig
from dbmr_ros.model import PRESETS
from dbmr_ros.model.inputs import prepare
from dbmr_ros.model.point_ops import fps_torch
from triton_checks import assert_triton_not_loaded, compile_without_gpu, require_triton

require_triton()  # skips the module where Triton is missing (fails under CI)

INTERPRETED = r'''
import json, sys
import torch
from dbmr_ros.model.fps_kernel import farthest_point_sample
from dbmr_ros.model.point_ops import fps_torch
clouds = torch.load(sys.argv[1], weights_only=True)
print(json.dumps({name: [farthest_point_sample(points, samples).tolist(),
                         fps_torch(points, samples).tolist()]
                  for name, (points, samples) in clouds.items()}))
'''


def _real_points(mvtec_root, num_points: int) -> torch.Tensor:
    """(2, num_points, 3) model-input points of two real cable_gland test frames."""
    refs = open_dataset('mvtec3d', mvtec_root, 'cable_gland', 'test')
    samples = [refs[i].load() for i in (0, len(refs) - 1)]
    arrays = [preprocess(s.rgb, s.xyz, PreprocessConfig()) for s in samples]
    rgb, xyz = (torch.from_numpy(np.stack(a)) for a in zip(*arrays))
    return prepare(rgb, xyz, num_points, 16).points


def _tied_points() -> torch.Tensor:
    """(1, 1000, 3) points on an integer grid with repeats: exact distances, many ties, and a
    size that is not a power of two (padding lanes)."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(10.0)] * 3, indexing='ij'), -1)
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    return grid.reshape(1, 1000, 3)[:, order % 500]


def test_kernel_gives_the_torch_loops_indices_in_the_interpreter(mvtec_root, tmp_path):
    """The same indices as `fps_torch` on real clouds at both presets' sizes (a batch of two),
    and on exact ties, which go to the lowest index as torch's argmax."""
    tiny, base = PRESETS['tiny'], PRESETS['base']
    clouds = {'tiny': (_real_points(mvtec_root, tiny.num_points), tiny.num_groups),
              'base': (_real_points(mvtec_root, base.num_points), base.num_groups),
              'ties': (_tied_points(), 200)}
    torch.save(clouds, tmp_path / 'clouds.pt')
    result = subprocess.run([sys.executable, '-c', INTERPRETED, str(tmp_path / 'clouds.pt')],
                            env={**os.environ, 'TRITON_INTERPRET': '1'}, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    indices = json.loads(result.stdout)
    for name, (points, samples) in clouds.items():
        kernel, loop = indices[name]
        assert kernel == loop, name
        assert np.array(kernel).shape == (points.shape[0], samples)
    assert len(set(indices['ties'][0][0])) == 200  # ties did not make it pick a point twice


@pytest.mark.parametrize('arch', [90, 80])
def test_kernel_compiles_for_a_gpu_without_one(arch):
    """Triton compiles the kernel to a cubin for an H100 (sm_90) and an A100 (sm_80) with the
    launcher's options, for both presets' cloud sizes and the largest cloud it takes, and the
    PTX has no fused multiply-add (the indices' equality with the torch loop relies on it)."""
    from dbmr_ros.model.fps_kernel import _fps_kernel, launch_options, MAX_POINTS
    signature = {'points': '*fp32', 'out': '*i32', 'num_points': 'i32',
                 'NUM_SAMPLES': 'constexpr', 'BLOCK': 'constexpr'}
    for num_points, samples in ((4096, 128), (16384, 512), (MAX_POINTS, 64)):
        options = launch_options(num_points)
        compile_without_gpu(_fps_kernel, signature,
                            {'NUM_SAMPLES': samples, 'BLOCK': options.pop('BLOCK')}, options, arch)


def test_cpu_paths_never_load_triton():
    """Triton is imported on CUDA only: grouping on the CPU leaves it unloaded."""
    assert_triton_not_loaded('import torch\n'
                             'from dbmr_ros.model.point_ops import fps\n'
                             'fps(torch.rand(1, 50, 3), 5)')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_kernel_gives_the_torch_loops_indices(mvtec_root):
    """Compiled for the GPU at hand: the CPU loop's indices, also replayed inside a CUDA graph."""
    from dbmr_ros.cuda_graphs import GraphedFunction
    from dbmr_ros.model.fps_kernel import farthest_point_sample
    from dbmr_ros.model.point_ops import fps, fps_method
    assert fps_method('cuda') in ('Triton kernel', 'pointnet2_ops kernel')
    for preset in ('tiny', 'base'):
        cfg = PRESETS[preset]
        points = _real_points(mvtec_root, cfg.num_points)
        expected = fps_torch(points, cfg.num_groups)
        assert torch.equal(farthest_point_sample(points.cuda(), cfg.num_groups).cpu(), expected)
        assert torch.equal(fps(points.cuda(), cfg.num_groups).cpu(), expected)
        graphed = GraphedFunction(farthest_point_sample, 'test')
        for _ in range(2):  # recorded, then replayed
            out = graphed(points.cuda(), num_samples=cfg.num_groups)
            assert torch.equal(out.cpu(), expected)
