"""Model configuration and presets; saved inside every checkpoint."""
from dataclasses import dataclass
from typing import Tuple

from dbmr_ros.dataclass_dict import from_dict, to_dict


@dataclass(frozen=True)
class DBMRConfig:
    """The network, its scoring and the scoring head's inputs (presets: PRESETS)."""

    image_size: int = 224         # model input side, pixels
    patch_size: int = 16          # image patch side, pixels
    num_points: int = 4096        # valid points grouped per cloud (even raster subsample)
    num_groups: int = 128         # FPS centres G
    group_size: int = 32          # kNN points per group k
    embed_dim: int = 128          # encoder width
    depth: int = 4                # joint encoder blocks
    num_heads: int = 4            # encoder attention heads
    decoder_dim: int = 128        # decoder width
    shared_decoder_depth: int = 1     # blocks of the modality-shared decoder
    modality_decoder_depth: int = 1   # blocks of each of the 2D and 3D decoders
    decoder_heads: int = 4        # decoder attention heads
    mask_ratio_2d: float = 0.75   # share of patches hidden in a masked training step
    mask_ratio_3d: float = 0.75   # share of point groups hidden in a masked training step
    alignment_radius: int = 1     # local alignment window, in patches (1: the 3x3 around a centre)
    loss_weight_2d: float = 1.0   # weight of the 2D reconstruction loss
    loss_weight_3d: float = 1.0   # weight of the 3D reconstruction loss
    loss_weight_cross: float = 0.5    # weight of the cross-modal loss
    smoothing_sigma: float = 4.0  # Gaussian smoothing of the maps, pixels at image_size
    # The map and image score a Detector uses unless told otherwise: 'learned' (the scoring
    # head) or 'paper' (the paper's reconstruction distances, 2D x 3D); both are always computed.
    scoring: str = 'learned'
    head_widths: Tuple[int, ...] = (16, 32, 64, 128)  # scoring head U-Net, one per level
    # Entries of the shape prior (nearest training FPFH patch descriptor), which the head reads
    # as one more channel; 0: no prior.
    shape_prior_components: int = 0
    shape_prior_radius: int = 2   # the prior's FPFH window: (2 r + 1)^2 pixels, every second one
    # The learned map covers the part grown by this many pixels (at image_size): missing
    # material at the silhouette (a cut, a bent rim) is anomalous, the far background is not.
    map_margin: int = 8

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f'image_size {self.image_size} is not a multiple of patch_size '
                             f'{self.patch_size}')
        if self.group_size > self.num_points or self.num_groups > self.num_points:
            raise ValueError('num_groups and group_size must not exceed num_points')
        for name in ('mask_ratio_2d', 'mask_ratio_3d'):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f'{name} must be in [0, 1)')
        if self.scoring not in ('learned', 'paper'):
            raise ValueError(f"scoring must be 'learned' or 'paper', got {self.scoring!r}")
        if not self.head_widths:
            raise ValueError('head_widths needs at least one width')
        if self.shape_prior_components < 0:
            raise ValueError('shape_prior_components must be >= 0')
        if self.shape_prior_radius < 1:
            raise ValueError('shape_prior_radius must be >= 1')
        if self.shape_prior_components and self.image_size % self.shape_patch_size:
            raise ValueError(f'the shape prior needs image_size to be a multiple of its patch '
                             f'size ({self.shape_patch_size} px)')
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise ValueError('embedding dims must be divisible by the head counts')

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def shape_patch_size(self) -> int:
        """Pixels per side of a shape-prior descriptor patch: about 1/28 of the image (BTF's
        8 px at 224), even (the descriptors are computed on every second pixel)."""
        return 2 * max(1, round(self.image_size / 56))

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> 'DBMRConfig':
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if not values.get('shape_prior_components'):
            values.pop('shape_prior_kind', None)  # saved by models without a prior: unused
        return from_dict(cls, values, 'model', REMOVED_OPTIONS)


# Options earlier versions had, with the one value this version implements: a saved config with
# that value loads, another is refused by name (dataclass_dict.from_dict). Each was an
# alternative measured no better, or a constant no preset changed (docs/design_notes.md,
# "Options that left").
REMOVED_OPTIONS = {'mlp_ratio': 4.0, 'head_context': True, 'score_passes': 1,
                   'visible_loss_weight': 1.0, 'unmasked_share': 0.5, 'score_2d': 'pixel',
                   'head_points': True, 'normal_smoothing': 0.0, 'shape_prior_kind': 'coreset',
                   'shape_prior_fusion': 0.0, 'head_views': 1}


# Fields that only change how maps and image scores are computed from the trained weights: a
# trained checkpoint can take other values (`dbmr-calibrate --set`, which refits the thresholds
# for them).
INFERENCE_FIELDS = ('smoothing_sigma', 'map_margin')


def parse_inference_setting(text: str) -> Tuple[str, object]:
    """'NAME=VALUE' -> (NAME, typed VALUE), NAME one of INFERENCE_FIELDS; ValueError
    otherwise."""
    name, _, value = text.partition('=')
    if name not in INFERENCE_FIELDS or not value:
        raise ValueError(f'expected NAME=VALUE with NAME one of {INFERENCE_FIELDS}, '
                         f'got {text!r}')
    kind = type(getattr(DBMRConfig(), name))
    try:
        return name, kind(value)
    except ValueError:
        raise ValueError(f'{name} takes one {kind.__name__} value, got {value!r}') from None


PRESETS = {
    # Real time on a 2-core CPU.
    'tiny': DBMRConfig(),
    # Paper-sized (MAE/Point-MAE-like widths) for a GPU.
    'base': DBMRConfig(patch_size=8, num_points=16384, num_groups=512, group_size=32,
                       embed_dim=384, depth=12, num_heads=6, decoder_dim=256,
                       shared_decoder_depth=4, modality_decoder_depth=2, decoder_heads=8),
}
