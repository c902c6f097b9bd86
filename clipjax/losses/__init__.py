"""Losses: contrastive image-text losses over the global batch (later: dense-task losses)."""

from clipjax.losses.contrastive import clip_loss, siglip_loss

__all__ = ["clip_loss", "siglip_loss"]
