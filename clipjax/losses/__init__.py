"""Losses: contrastive image-text losses over the global batch, MobileCLIP's distillation, dense-task losses."""

from clipjax.losses.contrastive import clip_loss, siglip_loss
from clipjax.losses.distill import clip_distillation_losses

__all__ = ["clip_distillation_losses", "clip_loss", "siglip_loss"]
