"""The one-command experiment of the paper (cross-modality segmentation), as named resumable steps."""
