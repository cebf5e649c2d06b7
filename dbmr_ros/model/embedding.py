"""The two hierarchical embeddings: point groups -> tokens (3D), image patches -> tokens (2D)."""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def max_over_points(h: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """(B, G, k, C) -> (B, G, C) (or (B, G, 1, C)): the maximum over each group's points.

    Without autograd (inference, the frozen network of the head stage) `amax`: the same values
    without the indices, which on the CPU cost 10 to 20 times the pooling itself (1.2 against
    0.1 ms a call at 128 groups). With autograd `max`, whose backward (the gradient to one
    point) the reproducible training runs were made with; amax's splits it between tied points
    and changes the trained weights' last bits."""
    if torch.is_grad_enabled() and h.requires_grad:
        return h.max(dim=2, keepdim=keepdim).values
    return h.amax(dim=2, keepdim=keepdim)


class GroupingBlock(nn.Module):
    """Mini-PointNet step over the points of each group: a shared MLP, max-pool over the group,
    the pooled feature concatenated back to every point, a second MLP."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim),
                                       nn.GELU())
        self.fuse_mlp = nn.Sequential(nn.Linear(2 * out_dim, out_dim), nn.LayerNorm(out_dim),
                                      nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, G, k, C_in) -> (B, G, k, C_out)."""
        h = self.point_mlp(x)
        pooled = max_over_points(h, keepdim=True)                         # (B, G, 1, C_out)
        # The fuse linear over [h, pooled], split in two: the pooled half once per group instead
        # of once per point, and no concatenated copy (2x faster block, same up to rounding).
        linear, channels = self.fuse_mlp[0], h.shape[-1]
        fused = (F.linear(h, linear.weight[:, :channels], linear.bias)
                 + F.linear(pooled, linear.weight[:, channels:]))
        return self.fuse_mlp[2](self.fuse_mlp[1](fused))


class PointEmbedding(nn.Module):
    """Linear projection of relative coordinates, two grouping blocks, max-pool: a token per
    group, plus a learned positional embedding of the group centre."""

    def __init__(self, dim: int):
        super().__init__()
        self.projection = nn.Linear(3, dim // 2)
        self.blocks = nn.Sequential(GroupingBlock(dim // 2, dim // 2),
                                    GroupingBlock(dim // 2, dim))
        self.position = nn.Sequential(nn.Linear(3, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, neighborhoods: torch.Tensor, centers: torch.Tensor):
        """neighborhoods: (B, G, k, 3) relative to centers (B, G, 3).
        Returns tokens (B, G, D) and positional embeddings (B, G, D)."""
        tokens = max_over_points(self.blocks(self.projection(neighborhoods)))
        return tokens, self.position(centers)


class ConvBlock(nn.Module):
    """Residual convolution over the patch grid: depthwise 3x3, LayerNorm, pointwise MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, D, h, w) -> (B, D, h, w)."""
        y = self.depthwise(x).permute(0, 2, 3, 1)
        return x + self.mlp(self.norm(y)).permute(0, 3, 1, 2)


class PatchEmbedding(nn.Module):
    """Linear projection of p x p patches (a strided convolution), two convolution blocks over
    the patch grid: a token per patch."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.projection = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.Sequential(ConvBlock(dim), ConvBlock(dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> tokens (B, L, D), L = (H / p) * (W / p), row-major."""
        return self.blocks(self.projection(images)).flatten(2).transpose(1, 2)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2D sine-cosine positional embedding (MAE), (grid_size ** 2, dim), row-major."""
    rows, cols = np.meshgrid(np.arange(grid_size, dtype=np.float64),
                             np.arange(grid_size, dtype=np.float64), indexing='ij')
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def encode(positions):
        angles = positions.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return torch.from_numpy(np.concatenate([encode(rows), encode(cols)], axis=1)).float()
