"""Transformer blocks and the local alignment attention mask between patches and groups."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, Lq, D) queries; context: (B, Lk, D) keys/values (x itself if None);
        mask: (B, Lq, Lk) bool, True where a query may attend."""
        context = x if context is None else context
        batch, lq, dim = x.shape
        q = self.q(x).view(batch, lq, self.heads, -1).transpose(1, 2)
        k, v = self.kv(context).view(batch, context.shape[1], 2, self.heads, -1).permute(
            2, 0, 3, 1, 4)
        attn_mask = None if mask is None else mask.unsqueeze(1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(batch, lq, dim))


class Block(nn.Module):
    """Pre-norm transformer block; with `cross=True` a cross-attention to a memory (key and value)
    follows the self-attention, as in the modality-specific decoders."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, cross: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.cross = cross
        if cross:
            self.norm_q = nn.LayerNorm(dim)
            self.norm_kv = nn.LayerNorm(dim)
            self.cross_attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                memory: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), mask=mask)
        if self.cross:
            x = x + self.cross_attn(self.norm_q(x), context=self.norm_kv(memory))
        return x + self.mlp(self.norm2(x))


def local_alignment_mask(patch_cells: torch.Tensor, group_cells: torch.Tensor,
                         radius: int) -> torch.Tensor:
    """Attention mask of the joint encoder over the sequence [patches; groups].

    patch_cells: (B, Lp, 2) long (row, col) of each visible patch in the patch grid.
    group_cells: (B, Lg, 2) long (row, col) of the patch each visible group centre falls on (for
    organized clouds from the centre point's pixel, for unorganized ones from projecting it with
    the camera intrinsics before the model is called).
    The window: a group and a patch see each other when their cells are within `radius` patches
    in both directions (Chebyshev distance), i.e. a (2r + 1)^2 neighbourhood of patches around
    where the group lies: the image context that a point group is aligned with. Attention
    within a modality is unrestricted.
    Returns (B, Lp + Lg, Lp + Lg) bool, True = may attend.
    """
    batch, lp, lg = patch_cells.shape[0], patch_cells.shape[1], group_cells.shape[1]
    near = (patch_cells[:, :, None, :] - group_cells[:, None, :, :]).abs().amax(-1) <= radius
    mask = torch.ones(batch, lp + lg, lp + lg, dtype=torch.bool, device=patch_cells.device)
    mask[:, :lp, lp:] = near
    mask[:, lp:, :lp] = near.transpose(1, 2)
    return mask
