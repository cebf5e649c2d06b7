"""A model of the good parts' local geometry: a Gaussian mixture over FPFH patch descriptors.

The reconstruction branch compares each point group with its own reconstruction, which a
smoothly displaced surface passes (a bent rim is still a plausible surface). This module asks
instead how likely a patch's local shape is among good parts: the negative log-likelihood of
its FPFH descriptor (`local_shape.patch_descriptors`) under a mixture of `components`
full-covariance Gaussians fitted on the training parts' patches. It is a density with a fixed
number of parameters (32 components x 33 dimensions: 37 k numbers), not a memory bank: its
size and cost do not grow with the training set. The scoring head reads it as one more input
channel and learns, from the synthetic anomalies, how far to trust it.

The mixture is fitted by the training code (`dbmr_ros.training.shape_prior`) and stored in the
checkpoint as buffers.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from dbmr_ros.model.local_shape import FPFH_DIM, patch_descriptors


class ShapePrior(nn.Module):
    """(B, S, S, 3) cloud in metres, (B, S, S) bool -> (B, S, S) anomaly of the local shape:
    the standardised negative log-likelihood per patch of `patch_size` pixels (DBMRConfig.
    shape_patch_size), bilinear to pixels."""

    def __init__(self, components: int, patch_size: int, dim: int = FPFH_DIM):
        super().__init__()
        self.patch_size = patch_size
        self.register_buffer('means', torch.zeros(components, dim))
        self.register_buffer('precision_cholesky', torch.eye(dim).repeat(components, 1, 1))
        self.register_buffer('log_weights', torch.full((components,), -math.log(components)))
        # Standardisation of the NLL on good parts' patches (median, spread), fitted with it.
        self.register_buffer('nll_centre', torch.zeros(()))
        self.register_buffer('nll_spread', torch.ones(()))

    def nll(self, descriptors: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) negative log-likelihood under the mixture."""
        x = descriptors.to(self.means.dtype)
        # Mahalanobis terms via the Cholesky factor of each precision: |(x - mu) P|^2.
        projected = torch.einsum('nd,kde->nke', x, self.precision_cholesky) - torch.einsum(
            'kd,kde->ke', self.means, self.precision_cholesky)                 # (N, K, D)
        log_det = torch.diagonal(self.precision_cholesky, dim1=-2, dim2=-1).log().sum(-1)
        dim = x.shape[1]
        log_prob = -0.5 * (projected ** 2).sum(-1) - 0.5 * dim * math.log(2 * math.pi) + log_det
        return -torch.logsumexp(log_prob + self.log_weights, dim=-1)

    def patch_scores(self, xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, S, S, 3) metres, (B, S, S) bool -> (B, g, g) standardised NLL per patch (g = S /
        patch_size), compressed with asinh (a foreign shape can score far above good ones)."""
        descriptors = patch_descriptors(xyz, valid, self.patch_size)        # (B, D, g, g)
        batch, dim, grid, _ = descriptors.shape
        nll = self.nll(descriptors.permute(0, 2, 3, 1).reshape(-1, dim)).view(batch, grid, grid)
        return torch.asinh((nll - self.nll_centre) / self.nll_spread)

    def forward(self, xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        scores = self.patch_scores(xyz, valid)
        size = valid.shape[1]
        return F.interpolate(scores[:, None], size=(size, size), mode='bilinear',
                             align_corners=False)[:, 0]
