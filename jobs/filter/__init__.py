"""Filter jobs: calibrating a scorer's thresholds on real annotated slices (`mrgen filter calibrate`)."""
