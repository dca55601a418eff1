"""Detectors: one module (or package) per method, each registering itself at its end. Importing this
package imports every method, so that :func:`flawscope.models.registry.list_models` knows them all."""

from flawscope.models import (  # noqa: F401
    autoencoder,
    cam_classifier,
    dfr,
    efficientad,
    feature_dictionary,
    feature_matching_ae,
    gmm_texture,
    padim,
    patchcore,
    simplenet,
    vae,
)
