"""Farthest point sampling as one Triton kernel: one program per cloud runs the whole loop.

The torch loop (`point_ops.fps_torch`) launches about six small kernels per sampled point;
replayed as a CUDA graph it is still a chain of that many graph nodes (~1000 for `tiny`, ~2500
for `base` in the profile), each waiting for the one before. Here a cloud's points and running
distances stay in one program's registers and the `num_samples` steps run inside the kernel:
one launch per call.
Triton compiles it at its first call for the GPU at hand (no CUDA toolchain at install time);
where Triton is missing, `point_ops` keeps the graphed loop.

The indices equal `fps_torch`'s: the squared distance is summed in the same order without fused
multiply-adds (`enable_fp_fusion=False`), and ties go to the lowest index, as torch's argmax.
"""
import torch
import triton
import triton.language as tl

# A cloud lives in one program's registers; far beyond 16 values per thread they spill to
# memory, so larger clouds take the graphed torch loop instead.
MAX_POINTS = 65536


@triton.jit
def _fps_kernel(points, out, num_points, NUM_SAMPLES: tl.constexpr, BLOCK: tl.constexpr):
    cloud = points + tl.program_id(0) * num_points * 3
    offsets = tl.arange(0, BLOCK)
    inside = offsets < num_points
    x = tl.load(cloud + offsets * 3, mask=inside, other=0.0)
    y = tl.load(cloud + offsets * 3 + 1, mask=inside, other=0.0)
    z = tl.load(cloud + offsets * 3 + 2, mask=inside, other=0.0)
    # Padding lanes start below every real distance, so argmax never picks them.
    min_dist = tl.where(inside, float('inf'), -1.0)
    farthest = tl.full((), 0, tl.int32)
    for i in range(NUM_SAMPLES):
        tl.store(out + tl.program_id(0) * NUM_SAMPLES + i, farthest)
        dx = x - tl.load(cloud + farthest * 3)
        dy = y - tl.load(cloud + farthest * 3 + 1)
        dz = z - tl.load(cloud + farthest * 3 + 2)
        min_dist = tl.minimum(min_dist, (dx * dx + dy * dy) + dz * dz)
        farthest = tl.argmax(min_dist, 0, tie_break_left=True).to(tl.int32)


def launch_options(num_points: int) -> dict:
    """Compile-time options of the kernel for clouds of `num_points` (also used by the test
    that compiles it for a GPU without one)."""
    block = triton.next_power_of_2(num_points)
    return {'BLOCK': block, 'num_warps': min(32, max(4, block // 512)),
            'enable_fp_fusion': False}


def farthest_point_sample(points: torch.Tensor, num_samples: int) -> torch.Tensor:
    """points (B, N, 3) on CUDA, N <= MAX_POINTS (on the CPU only under TRITON_INTERPRET=1).
    Returns indices (B, S) long, starting at index 0."""
    cloud = points.detach().float().contiguous()
    batch, num_points, _ = cloud.shape
    if num_points > MAX_POINTS:
        raise ValueError(f'{num_points} points exceed the kernel limit of {MAX_POINTS}')
    out = torch.empty(batch, num_samples, dtype=torch.int32, device=cloud.device)
    _fps_kernel[(batch,)](cloud, out, num_points, NUM_SAMPLES=num_samples,
                          **launch_options(num_points))
    return out.long()
