"""DBMRNet: dual-branch self-supervised masked reconstruction of RGB patches and point groups.

Training (framework figure, a): both token sets are randomly masked and tagged with a learned
modality token; a 2D-3D joint encoder with local alignment attention sees the visible tokens; a
modality-shared decoder adds mask tokens; a 2D and a 3D decoder cross-attend to the visible
encoder tokens of their own modality (E^v_2D, E^v_3D as key and value) and reconstruct masked
patches (MSE) and masked point groups (Chamfer). The cross-modal loss predicts each masked
group's points from the 2D decoder token of the patch its centre lies on, which ties the
reconstructed geometry to the image. Anomaly-aware training (dbmr_ros.training) feeds inputs
with synthetic defects and asks for the clean part (`Targets`), on hidden and visible tokens
alike, so the network learns to repair what it sees.

Inference (b): both modalities are reconstructed by one unmasked repairing pass; the input and
its reconstruction pass through the frozen network unmasked, and the per-group distance of the
3D decoder features, with the pixels' reconstruction error, gives the paper's anomaly maps. The
scoring head (`model.head`) reads these with the input and its reconstruction and gives the
learned map.
"""
from typing import Dict, NamedTuple

import torch
from torch import nn

from dbmr_ros.model.config import DBMRConfig
from dbmr_ros.model.embedding import PatchEmbedding, PointEmbedding, sincos_2d
from dbmr_ros.model.head import build_scoring_head
from dbmr_ros.model.inputs import Groups, Targets
from dbmr_ros.model.masking import Masking, no_masking, random_masking
from dbmr_ros.model.point_ops import chamfer_l2, gather
from dbmr_ros.model.shape_prior import ShapePrior
from dbmr_ros.model.transformer import Block, local_alignment_mask


class TrainOutput(NamedTuple):
    loss: torch.Tensor                  # () weighted sum
    losses: Dict[str, torch.Tensor]     # 'loss_2d', 'loss_3d', 'loss_cross'
    pred_patches: torch.Tensor          # (B, L, p*p*3)
    pred_groups: torch.Tensor           # (B, G, k, 3)
    mask_2d: torch.Tensor               # (B, L) 1 = masked
    mask_3d: torch.Tensor               # (B, G)


class TokenScores(NamedTuple):
    group: torch.Tensor                 # (B, G) feature distance per point group
    reconstruction: torch.Tensor        # (B, 3, S, S) reconstructed image (normalised)
    reconstructed_groups: torch.Tensor  # (B, G, k, 3) reconstructed neighbourhoods
    features_2d: torch.Tensor           # (B, L, Dd) frozen 2D decoder features of the input
    features_3d: torch.Tensor           # (B, G, Dd) frozen 3D decoder features of the input


class Embedded(NamedTuple):
    tokens_2d: torch.Tensor             # (B, L, D) patch tokens + 2D positional embedding
    tokens_3d: torch.Tensor             # (B, G, D) group tokens + centre positional embedding


class DBMRNet(nn.Module):
    def __init__(self, cfg: DBMRConfig):
        super().__init__()
        self.cfg = cfg
        dim, ddim = cfg.embed_dim, cfg.decoder_dim
        # Embeddings and modality tokens.
        self.patch_embed = PatchEmbedding(cfg.patch_size, dim)
        self.point_embed = PointEmbedding(dim)
        self.register_buffer('pos_2d', sincos_2d(dim, cfg.grid_size)[None], persistent=False)
        self.modality_2d = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_3d = nn.Parameter(torch.zeros(1, 1, dim))
        # Joint encoder.
        self.encoder = nn.ModuleList(Block(dim, cfg.num_heads)
                                     for _ in range(cfg.depth))
        self.encoder_norm = nn.LayerNorm(dim)
        # Modality-shared decoder.
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token_2d = nn.Parameter(torch.zeros(1, 1, ddim))
        self.mask_token_3d = nn.Parameter(torch.zeros(1, 1, ddim))
        self.register_buffer('decoder_pos_2d', sincos_2d(ddim, cfg.grid_size)[None],
                             persistent=False)
        self.decoder_pos_3d = nn.Sequential(nn.Linear(3, ddim), nn.GELU(), nn.Linear(ddim, ddim))
        self.shared_decoder = nn.ModuleList(Block(ddim, cfg.decoder_heads)
                                            for _ in range(cfg.shared_decoder_depth))
        # Modality-specific decoders with cross-attention to their own visible encoder tokens.
        self.memory_2d = nn.Linear(dim, ddim)
        self.memory_3d = nn.Linear(dim, ddim)
        self.decoder_2d = nn.ModuleList(Block(ddim, cfg.decoder_heads, cross=True)
                                        for _ in range(cfg.modality_decoder_depth))
        self.decoder_3d = nn.ModuleList(Block(ddim, cfg.decoder_heads, cross=True)
                                        for _ in range(cfg.modality_decoder_depth))
        self.norm_2d = nn.LayerNorm(ddim)
        self.norm_3d = nn.LayerNorm(ddim)
        self.head_2d = nn.Linear(ddim, cfg.patch_size ** 2 * 3)
        self.head_3d = nn.Linear(ddim, cfg.group_size * 3)
        self.head_cross = nn.Linear(ddim, cfg.group_size * 3)
        self._init_weights()
        # The learned scoring head (created after the init above: it keeps torch's defaults).
        components = cfg.shape_prior_components
        self.shape_prior = (ShapePrior(components, cfg.shape_patch_size,
                                       radius=cfg.shape_prior_radius) if components else None)
        self.scoring_head = build_scoring_head(cfg, self.shape_prior is not None)

    def _init_weights(self):
        for p in (self.modality_2d, self.modality_3d, self.mask_token_2d, self.mask_token_3d):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    # --- tensors <-> patches -------------------------------------------------------------

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> (B, L, p*p*3)."""
        p, g = self.cfg.patch_size, self.cfg.grid_size
        x = images.reshape(images.shape[0], 3, g, p, g, p)
        return torch.einsum('nchpwq->nhwpqc', x).reshape(images.shape[0], g * g, p * p * 3)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(B, L, p*p*3) -> (B, 3, S, S)."""
        p, g = self.cfg.patch_size, self.cfg.grid_size
        x = patches.reshape(patches.shape[0], g, g, p, p, 3)
        return torch.einsum('nhwpqc->nchpwq', x).reshape(patches.shape[0], 3, g * p, g * p)

    def cells(self, pixels: torch.Tensor) -> torch.Tensor:
        """Flat pixel indices (B, M) in the S x S image -> (B, M, 2) (row, col) patch cells."""
        size, p = self.cfg.image_size, self.cfg.patch_size
        return torch.stack([pixels // size // p, pixels % size // p], dim=-1)

    # --- the network ---------------------------------------------------------------------

    def embed(self, images: torch.Tensor, groups: Groups) -> 'Embedded':
        """Both embeddings with their positional embeddings (computed once per input, then
        shared by every masking of it)."""
        tokens_3d, pos_3d = self.point_embed(groups.neighborhoods, groups.centers)
        return Embedded(self.patch_embed(images) + self.pos_2d, tokens_3d + pos_3d)

    def encode(self, embedded: 'Embedded', groups: Groups, masking_2d: Masking,
               masking_3d: Masking):
        """Keep the visible tokens, tag modalities, run the joint encoder.

        Returns visible encoder tokens E^v_2D (B, L_vis, D) and E^v_3D (B, G_vis, D).
        """
        batch, device = embedded.tokens_2d.shape[0], embedded.tokens_2d.device
        visible_2d = gather(embedded.tokens_2d, masking_2d.keep) + self.modality_2d
        visible_3d = gather(embedded.tokens_3d, masking_3d.keep) + self.modality_3d
        grid = torch.arange(self.cfg.num_patches, device=device).expand(batch, -1)
        patch_cells = gather(torch.stack([grid // self.cfg.grid_size, grid % self.cfg.grid_size],
                                         dim=-1), masking_2d.keep)
        group_cells = gather(self.cells(groups.center_pixels), masking_3d.keep)
        mask = local_alignment_mask(patch_cells, group_cells, self.cfg.alignment_radius)
        x = torch.cat([visible_2d, visible_3d], dim=1)
        for block in self.encoder:
            x = block(x, mask=mask)
        x = self.encoder_norm(x)
        return x[:, :visible_2d.shape[1]], x[:, visible_2d.shape[1]:]

    def decode(self, encoded_2d: torch.Tensor, encoded_3d: torch.Tensor, groups: Groups,
               masking_2d: Masking, masking_3d: Masking, decode_2d: bool = True):
        """Shared decoder over visible tokens + mask tokens, then the modality decoders.

        Returns decoder features F_2D (B, L, Dd) and F_3D (B, G, Dd), in original token order;
        F_2D is None with decode_2d=False (the 3D decoder does not read the 2D one).
        """
        def with_mask_tokens(visible, token, masking):
            hidden = token.expand(visible.shape[0], masking.restore.shape[1] - visible.shape[1],
                                  -1)
            return gather(torch.cat([visible, hidden], dim=1), masking.restore)

        full_2d = with_mask_tokens(self.decoder_embed(encoded_2d), self.mask_token_2d,
                                   masking_2d) + self.decoder_pos_2d
        full_3d = with_mask_tokens(self.decoder_embed(encoded_3d), self.mask_token_3d,
                                   masking_3d) + self.decoder_pos_3d(groups.centers)
        x = torch.cat([full_2d, full_3d], dim=1)
        for block in self.shared_decoder:
            x = block(x)
        x_2d, x_3d = x[:, :full_2d.shape[1]], x[:, full_2d.shape[1]:]
        memory_3d = self.memory_3d(encoded_3d)
        for block in self.decoder_3d:
            x_3d = block(x_3d, memory=memory_3d)
        if not decode_2d:
            return None, self.norm_3d(x_3d)
        memory_2d = self.memory_2d(encoded_2d)
        for block in self.decoder_2d:
            x_2d = block(x_2d, memory=memory_2d)
        return self.norm_2d(x_2d), self.norm_3d(x_3d)

    def predict(self, features_2d: torch.Tensor, features_3d: torch.Tensor):
        """Decoder features -> patches (B, L, p*p*3) and group points (B, G, k, 3)."""
        groups = self.head_3d(features_3d)
        return self.head_2d(features_2d), groups.view(*groups.shape[:2], self.cfg.group_size, 3)

    # --- training ------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, groups: Groups, generator: torch.Generator = None,
                targets: Targets = None, masked: bool = True) -> TrainOutput:
        """Masked reconstruction with the model's own losses. images: (B, 3, S, S).

        targets: what the tokens are compared with; by default the input itself (the paper).
        Anomaly-aware training passes the clean sample behind a corrupted input, so the network
        learns what a good part has there. masked=False sees every token (training the
        unmasked repairing pass that inference runs).
        """
        batch, device = images.shape[0], images.device
        targets = targets or Targets(images, groups.neighborhoods)
        ratio_2d, ratio_3d = (self.cfg.mask_ratio_2d, self.cfg.mask_ratio_3d) if masked else (0, 0)
        masking_2d = random_masking(batch, self.cfg.num_patches, ratio_2d, device, generator)
        masking_3d = random_masking(batch, self.cfg.num_groups, ratio_3d, device, generator)
        encoded = self.encode(self.embed(images, groups), groups, masking_2d, masking_3d)
        features_2d, features_3d = self.decode(*encoded, groups, masking_2d, masking_3d)
        pred_patches, pred_groups = self.predict(features_2d, features_3d)
        losses = self.losses(targets, groups, features_2d, pred_patches, pred_groups)
        cfg = self.cfg
        loss = (cfg.loss_weight_2d * losses['loss_2d'] + cfg.loss_weight_3d * losses['loss_3d']
                + cfg.loss_weight_cross * losses['loss_cross'])
        return TrainOutput(loss, losses, pred_patches, pred_groups, masking_2d.mask,
                           masking_3d.mask)

    def losses(self, targets: Targets, groups: Groups, features_2d, pred_patches,
               pred_groups) -> Dict[str, torch.Tensor]:
        """2D MSE per patch, 3D Chamfer-L2 per group, and the cross-modal loss (each group's
        points predicted from the 2D decoder token at its centre's patch), averaged over every
        token, hidden (the paper) and visible alike (a network that also repairs what it
        sees)."""
        per_patch = ((pred_patches - self.patchify(targets.images)) ** 2).mean(-1)  # (B, L)
        loss_2d = per_patch.sum() / per_patch.numel()
        target = targets.neighborhoods.flatten(0, 1)                               # (B*G, k, 3)
        per_group = chamfer_l2(pred_groups.flatten(0, 1), target)            # (B*G,)
        cells = self.cells(groups.center_pixels)
        center_patch = cells[..., 0] * self.cfg.grid_size + cells[..., 1]    # (B, G)
        image_tokens = gather(features_2d, center_patch)                     # (B, G, Dd)
        cross = self.head_cross(image_tokens).view(-1, self.cfg.group_size, 3)
        per_cross = chamfer_l2(cross, target)
        return {'loss_2d': loss_2d, 'loss_3d': per_group.sum() / per_group.numel(),
                'loss_cross': per_cross.sum() / per_cross.numel()}

    # --- inference -----------------------------------------------------------------------

    @torch.no_grad()
    def reconstruct(self, embedded: 'Embedded', groups: Groups):
        """One unmasked pass that repairs what it sees: (B, 3, S, S), (B, G, k, 3)."""
        pred_patches, pred_groups = self.predict(*self.features(embedded, groups))
        return self.unpatchify(pred_patches), pred_groups.to(groups.neighborhoods.dtype)

    @torch.no_grad()
    def features(self, embedded: 'Embedded', groups: Groups, decode_2d: bool = True):
        """Unmasked pass through the frozen network: F_2D (B, L, Dd) (None with
        decode_2d=False), F_3D (B, G, Dd)."""
        batch, device = embedded.tokens_2d.shape[0], embedded.tokens_2d.device
        masking_2d = no_masking(batch, self.cfg.num_patches, device)
        masking_3d = no_masking(batch, self.cfg.num_groups, device)
        return self.decode(*self.encode(embedded, groups, masking_2d, masking_3d), groups,
                           masking_2d, masking_3d, decode_2d)

    @torch.no_grad()
    def score_tokens(self, images: torch.Tensor, groups: Groups) -> TokenScores:
        """Reconstruct, then compare input and reconstruction in decoder feature space."""
        embedded = self.embed(images, groups)
        # The repairing pass sees the input unmasked: its features are the input's.
        input_2d, input_3d = self.features(embedded, groups)
        pred_patches, rec_points = self.predict(input_2d, input_3d)
        rec_images = self.unpatchify(pred_patches)
        rec_points = rec_points.to(groups.neighborhoods.dtype)
        rec_groups = groups._replace(neighborhoods=rec_points)
        # The maps read the 3D features' distance alone: the 2D decoder is not run again.
        _, rec_3d = self.features(self.embed(rec_images, rec_groups), rec_groups,
                                  decode_2d=False)
        group = (input_3d - rec_3d).norm(dim=-1)
        return TokenScores(group.float(), rec_images, rec_points, input_2d, input_3d)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
