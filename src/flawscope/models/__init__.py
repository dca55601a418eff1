"""Detectors. Importing this package registers every method."""

from flawscope.models import patchcore  # noqa: F401  (registers "patchcore")
from flawscope.models import padim  # noqa: F401
from flawscope.models import gmm_texture  # noqa: F401
from flawscope.models import feature_dictionary  # noqa: F401
from flawscope.models import dfr  # noqa: F401
