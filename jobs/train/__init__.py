"""Training of the three MRGen stages with Ray Train + DeepSpeed (paper §3.4)."""
