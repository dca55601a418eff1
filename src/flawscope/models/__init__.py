"""Detectors. Importing this package registers every method."""

from flawscope.models import patchcore  # noqa: F401  (registers "patchcore")
from flawscope.models import padim  # noqa: F401
from flawscope.models import gmm_texture  # noqa: F401
from flawscope.models import feature_dictionary  # noqa: F401
from flawscope.models import dfr  # noqa: F401
from flawscope.models import autoencoder  # noqa: F401  (registers "ae_l2", "ae_ssim", "ae_mse")
from flawscope.models import vae  # noqa: F401
from flawscope.models import feature_matching_ae  # noqa: F401
from flawscope.models import efficientad  # noqa: F401
from flawscope.models import simplenet  # noqa: F401
from flawscope.models import cam_classifier  # noqa: F401
