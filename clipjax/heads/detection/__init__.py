"""Mask R-CNN and Cascade Mask R-CNN: static-shape anchors, RPN, NMS, RoIAlign, RoI heads and their targets."""
