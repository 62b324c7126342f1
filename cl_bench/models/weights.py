"""Reading a checkpoint file into a state dict, for every backbone (docs/architecture.md §6).

One reader with one set of rules: ``.safetensors`` files by ``safetensors``; anything else by
``torch.load(weights_only=True)`` (no code from the file runs), with a narrow allowlist of the
extra classes research checkpoints pickle beside their tensors (``argparse.Namespace``, numpy
scalars and dtypes); the state dict found under the usual wrapper keys
(:data:`WRAPPER_KEYS`). Key renaming belongs to each backbone (:mod:`~cl_bench.models.backbones`
for the ViT / UNet encoders, :mod:`~cl_bench.models.swin_weights` for Swin), which strip
:data:`WRAPPER_PREFIXES` the same way.
"""

from __future__ import annotations

import logging
import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from cl_bench.errors import DataError

#: prefixes added by wrappers (DataParallel/DDP, Lightning modules, torch.compile), stripped
WRAPPER_PREFIXES = ("module.", "model.", "net.", "backbone.", "_orig_mod.")
#: dict keys under which training scripts store the state dict, tried in this order
WRAPPER_KEYS = ("state_dict", "model", "net", "model_state_dict")


def log_detail(logger: logging.Logger, msg: str, *args) -> None:
    """Log a detail worth keeping but not worth a terminal line (what a checkpoint held, e.g.
    "loaded 126 Swin encoder tensors from ..."): at INFO to the log files only (the root
    logger's ``FileHandler`` s: a run's ``cli.log``), and as a DEBUG message to the terminal
    too when ``logger`` is enabled for DEBUG (``hydra.verbose=cl_bench`` or
    ``hydra.verbose=true`` on the command line).

    Args:
        logger: the module's logger; msg, args: the message and its ``%`` arguments, as for
            :meth:`logging.Logger.info`.
    """
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(msg, *args, stacklevel=2)
        return
    if not logger.isEnabledFor(logging.INFO):
        return
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 0, msg, args, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def _safe_extra_globals() -> list:
    """The data-only classes training scripts pickle next to their tensors (see module doc)."""
    import argparse

    extra: list = [argparse.Namespace]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a MONAI dependency
        return extra
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    # numpy >= 2 pickles name numpy._core, numpy 1.x pickles numpy.core: accept both spellings
    extra += [(scalar, "numpy._core.multiarray.scalar"), (scalar, "numpy.core.multiarray.scalar"),
              np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype, pickled by name
    if dtypes is not None:
        extra += [c for n in sorted(dir(dtypes)) if isinstance(c := getattr(dtypes, n), type)
                  and issubclass(c, np.dtype) and n != "ObjectDType"]
    return extra


#: what the second ``weights_only=True`` attempt allowlists: ``argparse.Namespace``, numpy
#: scalars (``numpy.{_core,core}.multiarray.scalar``), ``numpy.dtype`` and numpy's dtype classes
SAFE_EXTRA_GLOBALS = _safe_extra_globals()


def _global_name(g) -> str:
    return g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}"


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _unpickling_reason(error: Exception) -> str:
    """torch's reason for a ``weights_only`` refusal (the line after ``WeightsUnpickler
    error:``)."""
    text = str(error)
    tail = text.split("WeightsUnpickler error:", 1)[-1]
    return next((line.strip() for line in tail.splitlines() if line.strip()), type(error).__name__)


def _unreadable(path: Path, error: Exception) -> DataError:
    return DataError(f"backbone.weights: cannot read checkpoint {path}: {_first_line(error)}")


def _refusal(path: Path, error: Exception) -> DataError:
    """The one-line error for a torch file that ``weights_only=True`` cannot read even with
    :data:`SAFE_EXTRA_GLOBALS`: the conversion command when it pickles other classes, else the
    reason (a file that is not a torch checkpoint)."""
    allowed = {_global_name(g) for g in SAFE_EXTRA_GLOBALS}
    try:  # scans the pickle's opcodes; executes nothing
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # legacy (non-zip) format or not a checkpoint
        names = re.findall(r"GLOBAL (\S+) was not an allowed global", str(error))
    names = sorted(set(names) - allowed)
    if not names:
        return DataError(f"backbone.weights: cannot read checkpoint {path} with "
                         f"torch.load(weights_only=True): {_unpickling_reason(error)} (expected a "
                         "torch.save'd state dict or a .safetensors file)")
    out = path.with_name(path.stem + "_tensors.pt")
    convert = (f"import torch; ck=torch.load({str(path)!r}, map_location='cpu', "
               "weights_only=False); sd=ck.get('state_dict', ck) if isinstance(ck, dict) "
               "else ck.state_dict(); "
               f"torch.save({{k: v for k, v in sd.items() if torch.is_tensor(v)}}, {str(out)!r})")
    return DataError(
        f"backbone.weights: {path} pickles objects other than tensors ({', '.join(names)}), which "
        f"torch.load(weights_only=True) refuses; convert it once with: python -c \"{convert}\" "
        f"(only for a file you trust) and set backbone.weights={out}")


def read_checkpoint(path: Path) -> object:
    """Read a checkpoint file without executing code from it.

    ``.safetensors`` files are read with ``safetensors.torch.load_file``; anything else with
    ``torch.load(map_location="cpu", weights_only=True)``, retried once with
    :data:`SAFE_EXTRA_GLOBALS` allowlisted (``argparse.Namespace``, numpy scalars and dtypes, as
    the SSL / fine-tuning scripts of MONAI research-contributions and BrainSegFounder pickle them).

    Returns:
        the unpickled object (a dict for every supported layout), tensors on the CPU.

    Raises:
        DataError: the file cannot be read (corrupt, not a checkpoint), or it pickles other
        classes; the message names the file, the classes and the command that converts it.
    """
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
            return load_file(str(path))
        except Exception as e:
            raise DataError(f"backbone.weights: cannot read safetensors checkpoint {path}: "
                            f"{_first_line(e)}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass  # a class outside torch's default allowlist: retry with the narrow extra one
    except Exception as e:  # corrupt file, not a torch checkpoint
        raise _unreadable(path, e) from None
    try:
        with torch.serialization.safe_globals(SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:
        raise _unreadable(path, e) from None


def unwrap_state_dict(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Find the state dict inside a checkpoint object.

    Descends into the first of :data:`WRAPPER_KEYS` (``state_dict``, ``model``, ``net``,
    ``model_state_dict``) holding a dict until the dict holds only tensors; other entries (epoch,
    optimizer, args, ``best_acc``) are ignored.

    Returns:
        ``(state dict {str: Tensor}, wrapper keys descended, e.g. ["state_dict"])``.

    Raises:
        DataError: no dict of tensors is found; the message names the file and the keys seen.
    """
    trail: list[str] = []
    sd = obj
    while isinstance(sd, Mapping) and not all(isinstance(v, torch.Tensor) for v in sd.values()):
        key = next((k for k in WRAPPER_KEYS if isinstance(sd.get(k), Mapping)), None)
        if key is None:
            break
        trail.append(key)
        sd = sd[key]
    if not isinstance(sd, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        where = "".join(f"[{k!r}]" for k in trail)
        seen = (", ".join(map(repr, list(sd)[:6])) if isinstance(sd, Mapping)
                else type(sd).__name__)
        raise DataError(f"backbone.weights: {path}{where} does not hold a state dict of tensors "
                        f"(found {seen}); expected a dict of tensors, possibly under one of "
                        f"{list(WRAPPER_KEYS)}")
    return dict(sd), trail


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of checkpoint ``path`` (:func:`read_checkpoint`, then
    :func:`unwrap_state_dict`): ``{key: tensor}``, tensors on the CPU.

    Raises:
        DataError: as :func:`read_checkpoint` and :func:`unwrap_state_dict`, naming the file.
    """
    return unwrap_state_dict(read_checkpoint(path), path)[0]
