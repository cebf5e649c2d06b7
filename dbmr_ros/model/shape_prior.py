"""A model of the good parts' local geometry over FPFH patch descriptors.

The reconstruction branch compares each point group with its own reconstruction, which a
smoothly displaced surface passes (a bent rim is still a plausible surface). A shape prior asks
instead how usual a patch's local shape is among good parts: its FPFH descriptor
(`local_shape.patch_descriptors`) is scored against a model fitted on the training parts'
patches: the distance to the nearest of a greedy k-centre coreset of the training patches
(PatchCore's score on FPFH, as the classic baseline computes it, with a bank of a fixed size:
`components` entries of 33 numbers, 2048 by default, whatever the size of the training set).
The nearest entry remembers a shape that is rare but good (a thread's many flanks).

The score is standardised on the training parts' patches and asinh-compressed; the scoring
head reads it as one more input channel and learns, from the synthetic anomalies, how far to
trust it. The training code fits it (`dbmr_ros.training.shape_prior`); it lives in the
checkpoint as buffers.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from dbmr_ros.model.local_shape import FPFH_DIM, patch_descriptors


class ShapePrior(nn.Module):
    """(B, S, S, 3) cloud in metres, (B, S, S) bool -> (B, S, S) anomaly of the local shape:
    the standardised distance to the nearest of `components` training patch descriptors, per
    patch of `patch_size` pixels (DBMRConfig.shape_patch_size), bilinear to pixels."""

    def __init__(self, components: int, patch_size: int, dim: int = FPFH_DIM, stride: int = 2,
                 radius: int = 2, neighbours: int = 0):
        super().__init__()
        # The descriptors' pooling and sampling (`local_shape.patch_descriptors`).
        self.patch_size, self.stride, self.radius = patch_size, stride, radius
        self.neighbours = neighbours
        # Standardisation of the distance on good parts' patches (median, spread), fitted with
        # it (named 'nll' after an earlier prior: checkpoints keep the names).
        self.register_buffer('nll_centre', torch.zeros(()))
        self.register_buffer('nll_spread', torch.ones(()))
        self.register_buffer('bank', torch.zeros(components, dim))
        # The training part each entry came from (-1: the background's zero descriptor).
        self.register_buffer('bank_parts', torch.full((components,), -1, dtype=torch.long))

    def patch_scores(self, xyz: torch.Tensor, valid: torch.Tensor,
                     parts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, S, S, 3) metres, (B, S, S) bool -> (B, g, g) standardised score per patch (g =
        S / patch_size), compressed with asinh (a foreign shape can score far above good ones)."""
        descriptors = patch_descriptors(xyz, valid, self.patch_size, self.stride, self.radius,
                                        self.neighbours)                   # (B, D, g, g)
        batch, dim, grid, _ = descriptors.shape
        raw = self.nearest(descriptors.permute(0, 2, 3, 1).reshape(batch, -1, dim), parts)
        return torch.asinh((raw.view(batch, grid, grid) - self.nll_centre) / self.nll_spread)

    def forward(self, xyz: torch.Tensor, valid: torch.Tensor,
                parts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`parts` (B,) long: which training part each sample is, during the head's training
        (the prior then leaves that part's own entries out, so that a training part looks as
        unfamiliar as an unseen good one); None at inference."""
        return self.to_pixels(self.patch_scores(xyz, valid, parts), valid.shape[1])

    @staticmethod
    def to_pixels(scores: torch.Tensor, size: int) -> torch.Tensor:
        """(B, g, g) patch scores -> (B, size, size), bilinear."""
        return F.interpolate(scores[:, None], size=(size, size), mode='bilinear',
                             align_corners=False)[:, 0]

    def nearest(self, descriptors: torch.Tensor,
                parts: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, N, D) -> (B, N) distance to the nearest entry, leaving out the entries of each
        sample's own training part where `parts` (B,) is given."""
        x = descriptors.to(self.bank.dtype)
        # |x - b|^2 = |x|^2 + (|b|^2 - 2 x.b): the bracket as one matrix product that adds the
        # entries' norms (BLAS's beta term), |x|^2 only to each row's minimum; 6 times faster
        # than forming the whole sum (a temporary per term over all N x M pairs). Clamped,
        # since rounding can take an exact match a little below zero. In float32 even under
        # autocast: the bins run to 200, and bf16's 8 bits would round the squares by hundreds.
        with torch.autocast(x.device.type, enabled=False):
            partial = torch.addmm((self.bank ** 2).sum(-1), x.flatten(0, 1), self.bank.T,
                                  alpha=-2).view(*x.shape[:2], -1)         # (B, N, M)
            if parts is not None:
                own = self.bank_parts == parts.to(self.bank_parts.device)[:, None]  # (B, M)
                partial.masked_fill_(own[:, None], float('inf'))   # (B, N, M): no copy
            squared = partial.amin(-1) + (x ** 2).sum(-1)
        return squared.clamp_min(0).sqrt()
