"""Random fields for the synthetic anomalies: one batch's random numbers, drawn on a CPU
generator whatever the data's device, and the Perlin noise and shifts built from them."""
import functools
import math
from typing import Callable, Optional, Tuple

import torch


class Draws:
    """Random numbers for one batch: drawn on the CPU generator, returned on `device`."""

    def __init__(self, generator: torch.Generator, batch: int, device):
        self.generator, self.batch, self.device = generator, batch, device

    def uniform(self, low: float = 0.0, high: float = 1.0, shape=()) -> torch.Tensor:
        values = torch.rand((self.batch, *shape), generator=self.generator)
        return (low + (high - low) * values).to(self.device)

    def log_uniform(self, low: float, high: float, shape=()) -> torch.Tensor:
        return self.uniform(math.log(low), math.log(high), shape).exp()

    def choice(self, weights) -> torch.Tensor:
        """(B,) long index into `weights`, drawn by inverse CDF (one uniform per sample)."""
        cdf = torch.tensor(weights, dtype=torch.float64).cumsum(0)
        values = torch.rand(self.batch, generator=self.generator, dtype=torch.float64)
        picked = torch.searchsorted(cdf / cdf[-1], values, right=True).clamp_max(len(weights) - 1)
        return picked.to(self.device)

    def permutation_keys(self, length: int) -> torch.Tensor:
        """(B, length) random keys; their argsort is a random permutation per sample."""
        return torch.rand((self.batch, length), generator=self.generator).to(self.device)


def perlin(size: int, cells: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor,
           gradient_angles: torch.Tensor) -> torch.Tensor:
    """Batched 2D Perlin noise (B, size, size) in about [-1, 1].

    cells (B,): grid cells across the image; angle (B,): rotation of the grid; shift (B, 2):
    offset in cells; gradient_angles (B, G, G): the lattice's gradient directions (the lattice
    repeats every G cells, G > max(cells) + 1 keeps that out of view).
    """
    batch, lattice = gradient_angles.shape[:2]
    device = gradient_angles.device
    axis = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size - 0.5
    rows, cols = torch.meshgrid(axis, axis, indexing='ij')
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    scale = cells.float()[:, None, None]
    u = (cos * cols - sin * rows) * scale + shift[:, None, None, 0]
    v = (sin * cols + cos * rows) * scale + shift[:, None, None, 1]
    cell_u, cell_v = u.floor(), v.floor()
    frac_u, frac_v = u - cell_u, v - cell_v
    gradients = torch.stack([gradient_angles.cos(), gradient_angles.sin()], -1).flatten(1, 2)

    def corner(du: int, dv: int) -> torch.Tensor:
        iu = (cell_u.long() + du) % lattice
        iv = (cell_v.long() + dv) % lattice
        index = (iv * lattice + iu).flatten(1)                          # (B, S*S)
        g = torch.gather(gradients, 1, index[..., None].expand(-1, -1, 2)).view(
            batch, size, size, 2)
        return g[..., 0] * (frac_u - du) + g[..., 1] * (frac_v - dv)

    fade_u = frac_u ** 3 * (frac_u * (frac_u * 6 - 15) + 10)
    fade_v = frac_v ** 3 * (frac_v * (frac_v * 6 - 15) + 10)
    top = torch.lerp(corner(0, 0), corner(1, 0), fade_u)
    bottom = torch.lerp(corner(0, 1), corner(1, 1), fade_u)
    return math.sqrt(2.0) * torch.lerp(top, bottom, fade_v)


def perlin_draws(size: int, cells: Tuple[int, int], draw: Draws,
                 needed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Perlin noise with a random (log-uniform) cell count, rotation and offset per sample;
    `needed` (B,) bool: the samples whose noise is read (`for_samples`; all drawn alike)."""
    count = draw.log_uniform(cells[0], cells[1]).round()
    lattice = cells[1] + 2
    angle, shift = draw.uniform(0, math.pi), draw.uniform(0, lattice, (2,))
    gradients = draw.uniform(0, 2 * math.pi, (lattice, lattice))
    return for_samples(needed, functools.partial(perlin, size), count, angle, shift, gradients)


def for_samples(needed: Optional[torch.Tensor], compute: Callable[..., torch.Tensor],
                *batched: torch.Tensor) -> torch.Tensor:
    """compute(*batched), each of them (B, ...), where the (B,) bool `needed` holds (None: all);
    the other samples' values are zero or compute's, and must not be read. compute works per
    sample, so a sample's values do not depend on the others. On the CPU, whose time follows
    the samples computed, only the needed ones are; a GPU's follows the kernels launched, and
    selecting them would read `needed` back: it computes them all."""
    if needed is None or needed.device.type != 'cpu' or bool(needed.all()):
        return compute(*batched)
    rows = needed.nonzero()[:, 0]
    part = compute(*(x[rows] for x in batched))
    out = part.new_zeros((len(needed), *part.shape[1:]))
    out[rows] = part
    return out


def shifted(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """images (B, S, S, C) rolled by shift (B, 2) long pixels (rows, columns), wrapping
    around."""
    batch, size, _, channels = images.shape
    axis = torch.arange(size, device=images.device)
    rows = (axis[None, :] + shift[:, 0:1]) % size                            # (B, S)
    cols = (axis[None, :] + shift[:, 1:2]) % size
    flat = (rows[:, :, None] * size + cols[:, None, :]).flatten(1)           # (B, S*S)
    return torch.gather(images.flatten(1, 2), 1,
                        flat[..., None].expand(-1, -1, channels)).view_as(images)
