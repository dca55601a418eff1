"""Backbones and multi-layer feature extraction shared by every feature-based method."""
