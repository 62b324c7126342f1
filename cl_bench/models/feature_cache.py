"""Frozen work done once (docs/architecture.md §8): backbone outputs of a frozen backbone, computed once per
training sample and reused for every later epoch of the task.

With a frozen backbone and inputs that are not augmented (``seq_lp``; any strategy whose
:meth:`~cl_bench.strategies.base.Strategy.frozen_backbone` says so for a task), the backbone's
output for a training sample is the same every epoch, so only the first visit pays the forward
pass; 600 steps of batch 2 over 24 subjects visit each one 50 times. Each sample's output is
stored on its own (a slice of the batch it was first computed in) and a batch is re-assembled in
the memory layout the backbone produced (Swin stages are channels-last views; a contiguous copy
sends the decoder's convolutions down another kernel and changes the last bits). Measured on the
shipped backbones: the same weights, bit for bit, and the same R as recomputing every step on the
CPU where this was built; on another (an Intel Xeon of 2026-12) the Swin decoder's weights differ
by at most 7e-8 after 8 steps (its convolutions sum in another order), the R matrix is equal
(tests/test_feature_cache.py checks 1e-6); a backbone whose outputs depend on the batch's composition (batch
norm in training mode) would differ, and must not declare itself frozen.
The backbone runs in the mode the training loop left it in (its dropout/stochastic depth are 0 in
every shipped backbone; a backbone with active dropout must not be cached, and
``frozen_backbone`` is the strategy's promise that it is not).

``train.cache_frozen_features=false`` turns it off; a task whose cache would exceed
:data:`MAX_BYTES` is not cached (a log line says so).
"""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset, default_collate

from cl_bench.data.base import ArrayDataset

log = logging.getLogger(__name__)

#: the largest cache kept in memory for one task (bytes)
MAX_BYTES = 2 * 1024 ** 3


class IndexedDataset(Dataset):
    """``dataset`` with each item's index added under ``"index"`` (the cache's key).

    A DataLoader's batch is fetched whole (:meth:`__getitems__`, PyTorch's batched-fetch
    protocol) and comes out already collated, so the loader takes ``collate_fn=``
    :func:`as_batch`. From an :class:`~cl_bench.data.base.ArrayDataset` a batch is gathered from
    its stacked tensors in one indexing per key: the values, dtypes and shapes that fetching
    each sample and ``default_collate`` give (tests/test_feature_cache.py), without a Python call
    per sample (~0.1 ms less per batch of 32). Any other dataset (one that overrides
    ``__getitem__``, e.g. to augment) is fetched per sample and collated by ``default_collate``.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        return {**self.dataset[i], "index": i}

    def __getitems__(self, indices: list[int]) -> dict:
        """The batch of samples ``indices``, collated: ``{"image": (B, C, *spatial),
        "label": (B, ...), "index": (B,) int64, ...}``."""
        data = self.dataset
        if isinstance(data, ArrayDataset) and type(data).__getitem__ is ArrayDataset.__getitem__:
            idx = torch.as_tensor(indices, dtype=torch.int64)
            return {"image": data.images[idx], "label": data.labels[idx], "index": idx}
        return default_collate([self[i] for i in indices])


def as_batch(batch: dict) -> dict:
    """The ``collate_fn`` of a DataLoader over :class:`IndexedDataset`: its batches come collated."""
    return batch


def _nbytes(tree) -> int:
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_nbytes(t) for t in tree.values())
    return sum(_nbytes(t) for t in tree)


def _item(tree, i: int):
    """Sample ``i`` of a batch output ``(B, ...)``: a tensor, or a tuple / list / dict of them."""
    if isinstance(tree, torch.Tensor):
        return tree[i].clone()
    if isinstance(tree, dict):
        return {k: _item(v, i) for k, v in tree.items()}
    return type(tree)(_item(t, i) for t in tree)


def take(tree, index):
    """``tree`` (a tensor or a tuple / list / dict of them, each ``(B, ...)``) at batch
    positions ``index`` (a slice or an index tensor): e.g. one task's share of a batched pass."""
    if isinstance(tree, torch.Tensor):
        return tree[index]
    if isinstance(tree, dict):
        return {k: take(v, index) for k, v in tree.items()}
    return type(tree)(take(t, index) for t in tree)


def _layout(tree):
    """Each tensor's dimension order, outermost first (a Swin stage is channels-last)."""
    if isinstance(tree, torch.Tensor):
        return sorted(range(tree.dim()), key=lambda d: -tree.stride(d))
    if isinstance(tree, dict):
        return {k: _layout(v) for k, v in tree.items()}
    return type(tree)(_layout(t) for t in tree)


def _stack(items: list, layout):
    """Stack per-sample items into a batch with the memory layout the backbone gave (the next
    layer's kernels, hence the last bits of its results, depend on the layout)."""
    first = items[0]
    if isinstance(first, torch.Tensor):
        batch = torch.stack(items)
        inverse = sorted(range(len(layout)), key=layout.__getitem__)
        return batch.permute(layout).contiguous().permute(inverse)
    if isinstance(first, dict):
        return {k: _stack([it[k] for it in items], layout[k]) for k in first}
    return type(first)(_stack([it[k] for it in items], layout[k]) for k in range(len(first)))


class FeatureCache:
    """Per-sample backbone outputs of one task's training set.

    Args:
        size: the number of training samples (``len(task.train)``).

    ``__call__(backbone, x, index)`` returns what ``backbone(x)`` returns (a tensor, or a
    tuple / list / dict of tensors and of such containers, each tensor ``(B, ...)``), computing
    only the samples not seen yet, under ``torch.no_grad``. ``backbone`` is any callable of the
    batch that is fixed while the task trains (LwF's frozen teacher too). ``index``: ``(B,)`` the
    samples' positions in the dataset (the ``"index"`` the runner's loader adds).
    """

    def __init__(self, size: int):
        self.size = size
        self.items: dict[int, object] = {}
        self.layout = None
        self.enabled = True

    def __call__(self, backbone, x: torch.Tensor, index: torch.Tensor):
        if not self.enabled:
            with torch.no_grad():
                return backbone(x)
        idx = [int(i) for i in index]
        missing = [k for k, i in enumerate(idx) if i not in self.items]
        if missing:
            with torch.no_grad():
                out = backbone(x[missing] if len(missing) < len(idx) else x)
            if not self.items and _nbytes(out) / len(missing) * self.size > MAX_BYTES:
                log.info("frozen-feature cache off for this task: %.1f GB > %.1f GB",
                         _nbytes(out) / len(missing) * self.size / 1e9, MAX_BYTES / 1e9)
                self.enabled = False
                if len(missing) == len(idx):
                    return out
                with torch.no_grad():
                    return backbone(x)
            if self.layout is None:
                self.layout = _layout(out)
            for k, j in enumerate(missing):
                self.items[idx[j]] = _item(out, k)
            if len(missing) == len(idx):
                return out  # this batch's own values, as an uncached step would use
        return _stack([self.items[i] for i in idx], self.layout)
