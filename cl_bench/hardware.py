"""What the CPU can do fast, and the precision that follows from it.

``hardware.precision=auto`` (the CPU default) resolves per machine *and* per encoder: bfloat16
autocast (``bf16-mixed``) where the CPU computes bfloat16 natively (Intel AMX or AVX512-BF16)
and the encoder class declares ``AUTO_BF16 = True`` because its quality was checked under it
(:class:`~cl_bench.models.swin.SwinEncoder`: the main job's validation Dice and age MAE over 5
paired seeds, with its segmentation decoder kept in fp32, ``backbone.decoder_fp32``;
``results/reference/bench/swin_speed_options/README.md``). Everywhere else fp32 (``32-true``): emulated
bfloat16 is slower than fp32, and an unchecked model may lose accuracy (DualLoRA's task
retrieval on the digits ViT drops from 1.0 to 0.61 on one task under bf16). Weights, optimiser
states and losses stay fp32 either way (Lightning's mixed precision). A run records the
precision it used (``metrics.json`` ``precision``).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: CPU flags (Linux /proc/cpuinfo) that mean native bfloat16 arithmetic
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=None)
def _cpuinfo(keys: tuple[str, ...]) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line starting with one of ``keys`` (``None``
    where there is none or the file is not readable)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where it is not readable)."""
    return frozenset((_cpuinfo(("flags", "Features")) or "").split())


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` ``model name``; ``"unknown"`` where not readable)."""
    return _cpuinfo(("model name",)) or "unknown"


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (any of :data:`BF16_FLAGS`)."""
    return bool(cpu_flags() & set(BF16_FLAGS))


def resolve_precision(precision: str, accelerator: str, encoder: object = None) -> str:
    """Lightning's precision for ``hardware.precision`` on ``hardware.accelerator``.

    ``"auto"``: ``"32-true"`` unless ``encoder`` (the model's shared encoder, an instance or
    class) has ``AUTO_BF16 = True``; then ``"bf16-mixed"`` on an accelerator, and on a CPU if
    :func:`native_bf16`. Any other value is returned as given (an explicit ``bf16-mixed`` works
    with every encoder, and on a CPU without native bfloat16, slowly).
    """
    if precision != "auto":
        return precision
    if not getattr(encoder, "AUTO_BF16", False):
        return "32-true"
    if accelerator == "cpu":
        return "bf16-mixed" if native_bf16() else "32-true"
    return "bf16-mixed"


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity set (``taskset``, a SLURM allocation,
    a container's cpuset) where the OS tells it, else :func:`os.cpu_count`.

    Returns:
        at least 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity API (macOS, Windows)
        return max(1, os.cpu_count() or 1)


def capped_threads(requested: int) -> int:
    """The intra-op thread count for ``hardware.num_threads``: as asked, but at most
    :func:`usable_cpus`, saying so in one logged line when it caps.

    More threads than CPUs only contend: OpenMP's threads spin-wait on one another, and 1000
    threads on 2 CPUs did not finish 2 steps of the digits stream in 300 s.

    Args:
        requested: ``hardware.num_threads`` (> 0, checked by the schema).

    Returns:
        ``min(requested, usable_cpus())``.
    """
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    log.warning("hardware.num_threads=%d capped to %d: this machine gives the run %d CPU%s "
                "(more threads than CPUs only wait on each other)", requested, cpus, cpus,
                "" if cpus == 1 else "s")
    return cpus
