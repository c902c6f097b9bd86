"""Losses: contrastive image-text losses (later: dense-task losses)."""

from clipjax.losses.contrastive import clip_loss

__all__ = ["clip_loss"]
