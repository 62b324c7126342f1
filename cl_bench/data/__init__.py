"""Task streams and datasets."""

from cl_bench.data.base import ArrayDataset, Task

__all__ = ["ArrayDataset", "Task"]
