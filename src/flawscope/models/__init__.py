"""Detectors. Importing this package registers every method."""

from flawscope.models import (
    autoencoder,  # noqa: F401  (registers "ae_l2", "ae_ssim", "ae_mse")
    cam_classifier,  # noqa: F401
    dfr,  # noqa: F401
    efficientad,  # noqa: F401
    feature_dictionary,  # noqa: F401
    feature_matching_ae,  # noqa: F401
    gmm_texture,  # noqa: F401
    padim,  # noqa: F401
    patchcore,  # noqa: F401  (registers "patchcore")
    simplenet,  # noqa: F401
    vae,  # noqa: F401
)
