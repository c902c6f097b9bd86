"""Data sources, on-device transforms and grain pipelines."""
