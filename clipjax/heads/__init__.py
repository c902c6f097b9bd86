"""Task heads on pretrained towers: classification and depth (finetuning); segmentation and detection to come."""
