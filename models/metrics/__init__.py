"""Metrics as pure functions of arrays and models (no Ray, no storage): what the evaluation jobs of
``mrgen.jobs.evaluate`` compute.

``dice`` (volumetric Dice of segmenters), ``reconstruction`` (PSNR / SSIM of the autoencoder), ``frechet``
(the Fréchet distance of image features, FID), ``kid`` (the kernel distance of the same features, KID),
``mask_dependence`` and ``mask_following`` (does the mask controller use its masks: in its loss, in its samples).
"""
