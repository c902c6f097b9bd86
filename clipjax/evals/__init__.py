"""Evaluators: zero-shot classification (later: retrieval, classification, mIoU, depth, COCO)."""
