"""Task heads on pretrained towers (finetuning): classification, depth and semantic segmentation; detection to come."""
