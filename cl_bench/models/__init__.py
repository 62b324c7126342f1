"""Backbones, heads and the continual model."""

from cl_bench.models.backbones import ViTEncoder
from cl_bench.models.continual import ContinualModel

__all__ = ["ContinualModel", "ViTEncoder"]
