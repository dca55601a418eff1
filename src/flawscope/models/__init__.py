"""Detectors. Importing this package registers every method."""

from flawscope.models import patchcore  # noqa: F401  (registers "patchcore")
