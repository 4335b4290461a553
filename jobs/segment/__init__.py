"""Downstream segmentation: nnU-Net v2 training and volumetric Dice evaluation on MRGen-DB slices."""
