"""Continual-learning strategies: one file each, built from ``conf/strategy/*.yaml``."""

from cl_bench.strategies.base import Strategy

__all__ = ["Strategy"]
