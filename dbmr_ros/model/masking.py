"""Random token masking as in MAE: argsort of noise, vectorised over the batch."""
from typing import NamedTuple

import torch


class Masking(NamedTuple):
    keep: torch.Tensor     # (B, L_keep) long: indices of visible tokens, in shuffled order
    mask: torch.Tensor     # (B, L) float: 1 masked, 0 visible, in original order
    restore: torch.Tensor  # (B, L) long: undoes the shuffle (ids_restore)


def masking_from_noise(noise: torch.Tensor, num_keep: int) -> Masking:
    """noise: (B, L); the `num_keep` tokens of smallest noise stay visible."""
    shuffle = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones_like(noise)
    mask[:, :num_keep] = 0
    return Masking(shuffle[:, :num_keep], torch.gather(mask, 1, restore), restore)


def random_masking(batch: int, length: int, ratio: float, device=None,
                   generator: torch.Generator = None) -> Masking:
    """Mask round(length * ratio) tokens per sample, independently per sample.

    The noise is drawn where the generator lives (the CPU) and then moved to `device`: the same
    seed masks the same tokens on every device, and no device needs a generator of its own.
    """
    num_keep = length - int(round(length * ratio))
    noise = torch.rand(batch, length, generator=generator).to(device)
    return masking_from_noise(noise, num_keep)


def no_masking(batch: int, length: int, device=None) -> Masking:
    order = torch.arange(length, device=device).expand(batch, length)
    return Masking(order, torch.zeros(batch, length, device=device), order)
