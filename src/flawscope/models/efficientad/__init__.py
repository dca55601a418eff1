"""EfficientAD (Batzner, Heckler & Koenig, WACV 2024): the detector (:mod:`.detector`), its patch
description networks and teacher distillation (:mod:`.pdn`) and its int8 quantization (:mod:`.quantize`)."""

from flawscope.models.efficientad.detector import EfficientAD

__all__ = ["EfficientAD"]
