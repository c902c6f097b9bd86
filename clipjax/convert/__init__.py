"""Converters from PyTorch checkpoints to clipjax parameters."""
