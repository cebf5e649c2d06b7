"""Operations on image-grid tensors (maps, masks and organized point clouds), batched.

Shared by the anomaly synthesizer, the scoring head's inputs and the maps, so that a normal or
a blur is computed one way everywhere.
"""
import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) separable Gaussian, truncated at 4 sigma, reflect padding (identity for
    sigma <= 0)."""
    if sigma <= 0:
        return maps
    radius = min(int(4 * sigma + 0.5), min(maps.shape[-2:]) - 1)
    x = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    y = F.pad(maps[:, None], (radius, radius, 0, 0), mode='reflect')
    y = F.conv2d(y, kernel.view(1, 1, 1, -1))
    y = F.pad(y, (0, 0, radius, radius), mode='reflect')
    return F.conv2d(y, kernel.view(1, 1, -1, 1))[:, 0]


# Views of a square grid as (quarter turns, mirrored), by how many are used: the dihedral
# group's elements, those of the smaller counts first.
HEAD_VIEWS = {1: ((0, False),), 2: ((0, False), (0, True)),
              4: tuple((k, False) for k in range(4)),
              8: tuple((k, m) for m in (False, True) for k in range(4))}


def to_view(maps: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """(..., H, W) -> the same grid turned by `turns` quarter turns, then mirrored left to
    right."""
    maps = torch.rot90(maps, turns, (-2, -1))
    return maps.flip(-1) if mirrored else maps


def from_view(maps: torch.Tensor, turns: int, mirrored: bool) -> torch.Tensor:
    """The inverse of `to_view`."""
    return torch.rot90(maps.flip(-1) if mirrored else maps, -turns, (-2, -1))


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, H, W) bool -> bool, grown by `radius` pixels (square structuring element)."""
    if radius <= 0:
        return mask
    # A square is a row times a column, and a pixel is set where its window along each counts
    # any set pixel: a difference of two cumulative sums, exact in integers. Ten times cheaper
    # than max pooling on the CPU (2.3 -> 0.24 ms per frame at radius 8 and 224 px on 2 cores).
    counts = mask.to(torch.int32)
    for dim in (1, 2):
        size = counts.shape[dim]
        before_after = (radius + 1, radius)
        cumulative = F.pad(counts, (0, 0) + before_after if dim == 1 else before_after).cumsum(dim)
        counts = (cumulative.narrow(dim, 2 * radius + 1, size)
                  - cumulative.narrow(dim, 0, size))
    return counts > 0


def smoothed_cloud(xyz: torch.Tensor, valid: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W, 3) organized cloud smoothed by a Gaussian of `sigma` pixels over its valid
    points only (a normalised convolution: the background never pulls a point towards 0);
    invalid points stay 0. Identity for sigma <= 0."""
    if sigma <= 0:
        return xyz
    weights = valid.to(xyz.dtype)
    batch, height, width, _ = xyz.shape
    channels = (xyz * weights[..., None]).permute(0, 3, 1, 2).reshape(-1, height, width)
    blurred = gaussian_blur(channels, sigma).view(batch, 3, height, width).permute(0, 2, 3, 1)
    support = gaussian_blur(weights, sigma)[..., None]
    return torch.where(valid[..., None], blurred / support.clamp_min(1e-6), 0.0)


def surface_normals(xyz: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Unit normals (B, H, W, 3) of an organized cloud (B, H, W, 3), facing the camera.

    Central differences where both neighbours are valid, one-sided where only one is; pixels
    without a usable pair in both directions, and invalid ones, get the reversed viewing ray
    (-p / |p|), which is what a camera sees of an unknown surface.
    """
    def difference(dim: int):
        # Neighbour pairs along `dim` (1: rows, 2: columns); roll wraps around, so the first
        # and last lines have no neighbour on their outer side.
        ahead_ok = torch.roll(valid, -1, dims=dim) & ~_edge(valid, dim, first=False)
        behind_ok = torch.roll(valid, 1, dims=dim) & ~_edge(valid, dim, first=True)
        forward = torch.where(ahead_ok[..., None], torch.roll(xyz, -1, dims=dim), xyz)
        backward = torch.where(behind_ok[..., None], torch.roll(xyz, 1, dims=dim), xyz)
        return forward - backward, (ahead_ok | behind_ok) & valid

    d_rows, ok_rows = difference(1)
    d_cols, ok_cols = difference(2)
    normals = torch.cross(d_cols, d_rows, dim=-1)
    length = normals.norm(dim=-1, keepdim=True)
    ray = -xyz / xyz.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    usable = ok_rows & ok_cols & (length[..., 0] > 1e-12)
    normals = torch.where(usable[..., None], normals / length.clamp_min(1e-12), ray)
    # Face the camera (the optical frame's origin).
    facing = (normals * xyz).sum(-1, keepdim=True) > 0
    return torch.where(facing, -normals, normals)


def _edge(template: torch.Tensor, dim: int, first: bool) -> torch.Tensor:
    """Bool mask of the first (or last) row/column along `dim` (1 or 2)."""
    edge = torch.zeros_like(template)
    if dim == 1:
        edge[:, 0 if first else -1] = True
    else:
        edge[:, :, 0 if first else -1] = True
    return edge
