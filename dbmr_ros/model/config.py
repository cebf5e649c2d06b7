"""Model configuration and presets; saved inside every checkpoint."""
from dataclasses import dataclass
from typing import Tuple

from dbmr_ros.dataclass_dict import from_dict, to_dict
from dbmr_ros.model.grid import HEAD_VIEWS
from dbmr_ros.model.shape_prior import SHAPE_PRIOR_KINDS


@dataclass(frozen=True)
class DBMRConfig:
    image_size: int = 224
    patch_size: int = 16
    num_points: int = 4096        # valid points grouped per cloud (even raster subsample)
    num_groups: int = 128         # FPS centres G
    group_size: int = 32          # kNN points per group k
    embed_dim: int = 128
    depth: int = 4                # joint encoder blocks
    num_heads: int = 4
    decoder_dim: int = 128
    shared_decoder_depth: int = 1
    modality_decoder_depth: int = 1
    decoder_heads: int = 4
    mlp_ratio: float = 4.0
    mask_ratio_2d: float = 0.75
    mask_ratio_3d: float = 0.75
    # Inference reconstruction: 1 = one unmasked pass of a network trained to repair what it
    # sees (synthetic defects in, the clean part out: visible_loss_weight > 0); n >= 2 = n fixed
    # maskings, each keeping 1 / n of the tokens visible, every token predicted while hidden
    # (the paper's way, n times the cost; no better on the selection set: docs/design_notes.md).
    score_passes: int = 1
    visible_loss_weight: float = 1.0  # loss weight of visible tokens (0: the paper, hidden only)
    unmasked_share: float = 0.5       # training steps that see every token (repair training)
    # 2D map: 'pixel' = per-pixel reconstruction error; 'feature' = the paper's distance of the
    # frozen 2D decoder's features per patch (it did not localise at our budget:
    # docs/design_notes.md).
    score_2d: str = 'pixel'
    alignment_radius: int = 1     # local alignment window, in patches (1: the 3x3 around a centre)
    loss_weight_2d: float = 1.0
    loss_weight_3d: float = 1.0
    loss_weight_cross: float = 0.5
    smoothing_sigma: float = 4.0  # Gaussian smoothing of the maps, pixels at image_size
    # Image score and map: 'learned' (the scoring head, trained on synthetic anomalies) or
    # 'paper' (reconstruction / feature distances, fused by product). Both are always computed
    # for evaluation; this is the one a Detector uses unless told otherwise.
    scoring: str = 'learned'
    head_widths: Tuple[int, ...] = (16, 32, 64, 128)  # scoring head U-Net, one per level
    head_context: bool = True     # the head also reads the network's decoder features per patch
    # The head also reads each pixel's normalised point (where on the part it lies, which
    # depends on the pose). False: only pose-free per-pixel inputs (no better over two head
    # seeds on the selection sets: docs/design_notes.md).
    head_points: bool = True
    # Gaussian sigma (pixels at image_size) of the cloud the head's normals are computed from:
    # per-pixel differences of raw points are noisy (neighbouring normals differ by 5 degrees
    # in the median on cable_gland), so a smooth bump's tilt can hide in the noise. 0 (off):
    # 1.5 px was no better on the selection set (docs/design_notes.md).
    normal_smoothing: float = 0.0
    # A model of the good parts' FPFH patch descriptors (model.shape_prior) whose score the
    # head reads as one more channel: its entries (the mixture's components, the coreset's
    # descriptors); 0: none. config/train_tiny.yaml trains one (docs/design_notes.md).
    shape_prior_components: int = 0
    shape_prior_kind: str = 'mixture'   # 'mixture' (a density) | 'coreset' (nearest entry)
    # The prior's FPFH histograms the (2 r + 1)^2 window of every second pixel: 2 (24 points)
    # or 3 (48 points, closer to the classic baseline's 99: the map alone better on both
    # selection sets, the whole default training worse; about 11 ms more a frame on 2 CPU
    # cores; docs/design_notes.md).
    shape_prior_radius: int = 2
    # Late fusion: this times the prior's standardised map is added to the head's logits at
    # inference (the head's training never sees it). The head learns how far to trust the
    # prior from synthetic anomalies alone; a fixed share on top is the ensemble of the head
    # and a PatchCore on FPFH. 0: the head's map alone.
    shape_prior_fusion: float = 0.0
    # The learned map covers the part grown by this many pixels (at image_size): missing
    # material at the silhouette (a cut, a bent rim) is anomalous, the far background is not.
    map_margin: int = 8
    # The head's logits averaged over this many views of its inputs (1: as given; 2: and
    # mirrored; 4: the four quarter turns; 8: turned and mirrored), the views training's flips
    # and turns taught it. The network runs once; each view costs one more head pass. On
    # cable_gland's selection sets no view count moved a figure by a point (design notes).
    head_views: int = 1

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(f'image_size {self.image_size} is not a multiple of patch_size '
                             f'{self.patch_size}')
        if self.group_size > self.num_points or self.num_groups > self.num_points:
            raise ValueError('num_groups and group_size must not exceed num_points')
        for name in ('mask_ratio_2d', 'mask_ratio_3d'):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f'{name} must be in [0, 1)')
        if self.score_2d not in ('pixel', 'feature'):
            raise ValueError(f"score_2d must be 'pixel' or 'feature', got {self.score_2d!r}")
        if self.scoring not in ('learned', 'paper'):
            raise ValueError(f"scoring must be 'learned' or 'paper', got {self.scoring!r}")
        if not self.head_widths:
            raise ValueError('head_widths needs at least one width')
        if self.head_views not in HEAD_VIEWS:
            raise ValueError(f'head_views must be one of {tuple(HEAD_VIEWS)}, got '
                             f'{self.head_views!r}')
        if self.score_passes < 1:
            raise ValueError('score_passes must be at least 1')
        if (self.score_passes == 1 or self.unmasked_share > 0) and self.visible_loss_weight <= 0:
            raise ValueError('an unmasked pass needs visible_loss_weight > 0 (the network must '
                             'learn to reconstruct what it sees)')
        if self.shape_prior_kind not in SHAPE_PRIOR_KINDS:
            raise ValueError(f'shape_prior_kind must be one of {SHAPE_PRIOR_KINDS}, got '
                             f'{self.shape_prior_kind!r}')
        if self.shape_prior_components < 0:
            raise ValueError('shape_prior_components must be >= 0')
        if self.shape_prior_radius < 1:
            raise ValueError('shape_prior_radius must be >= 1')
        if self.shape_prior_fusion < 0 or (self.shape_prior_fusion
                                           and not self.shape_prior_components):
            raise ValueError('shape_prior_fusion must be >= 0, and 0 without a shape prior')
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
        return from_dict(cls, values, 'model')


# Fields that only change how maps and image scores are computed from the trained weights: a
# trained checkpoint can take other values (`dbmr-calibrate --set`, which refits the thresholds
# for them), and benchmarks/sweep_inference.py compares values without retraining.
INFERENCE_FIELDS = ('smoothing_sigma', 'map_margin', 'score_passes',
                    'shape_prior_fusion', 'head_views')


def parse_inference_setting(text: str) -> Tuple[str, list]:
    """'NAME=V1,V2,...' -> (NAME, [typed values]), NAME one of INFERENCE_FIELDS; ValueError
    otherwise."""
    name, _, values = text.partition('=')
    if name not in INFERENCE_FIELDS or not values:
        raise ValueError(f'expected NAME=VALUE[,VALUE...] with NAME one of {INFERENCE_FIELDS}, '
                         f'got {text!r}')
    kind = type(getattr(DBMRConfig(), name))
    try:
        return name, [kind(v) for v in values.split(',')]
    except ValueError:
        raise ValueError(f'{name} takes {kind.__name__} values, got {values!r}') from None


PRESETS = {
    # Real time on a 2-core CPU.
    'tiny': DBMRConfig(),
    # Paper-sized (MAE/Point-MAE-like widths) for a GPU.
    'base': DBMRConfig(patch_size=8, num_points=16384, num_groups=512, group_size=32,
                       embed_dim=384, depth=12, num_heads=6, decoder_dim=256,
                       shared_decoder_depth=4, modality_decoder_depth=2, decoder_heads=8),
}
