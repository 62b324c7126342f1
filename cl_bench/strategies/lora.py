"""One LoRA adapter (+ head) per task on a frozen backbone.

The "LoRA" arm of the brain-MRI foundation-model study (Continual learning of a frozen brain-MRI
foundation model, arXiv 2602.23533): the pretrained encoder stays frozen, each task gets its own
low-rank adapter (Hu et al. 2021, arXiv 2106.09685) and head; at evaluation of task j, adapter j
is active. Old adapters and heads never change, so BWT is exactly 0 *as measured* by the runner's
re-evaluation, not by skipping it. Adapters live in peft (``add_adapter`` / ``set_adapter``) and are
saved with ``save_pretrained`` under ``adapters/<task>/``.

Deviation: the paper's rank, targets and scaling are not published; ours are config values
(defaults r=8, alpha=16 on the backbone's own targets, ``lora_targets``: the attention
projections, ``qkv``/``out_proj`` of a ViT, ``attn.qkv``/``attn.proj`` of a Swin transformer, both
blocks of each of its four stages; its stage 0, the patch embedding, gets none). As in the
paper's summary, a whole Swin UNETR (``backbone.decoder=shared``, the default) also gets adapters
in its pretrained decoder: the two 3x3x3 convolutions of each residual block (peft wraps
``nn.Conv3d``; the transposed convolutions stay frozen), only for tasks whose head reads the
decoder (:meth:`LoRAFamily.task_targets`); each task's head is small (a 1x1x1 output layer, a
linear age head). With ``backbone.decoder=unetr`` (an ablation) each segmentation task's 5.3 M
parameter decoder trains in full instead. ``params.json`` splits what trains into adapters,
head and decoder, and gives the adapters' share of the backbone.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model
import torch
from peft.tuners.lora import LoraLayer
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.files import atomic_dir
from cl_bench.ranges import (NonEmptyStrList, NonNegativeFloat, OpenFraction, PositiveFloat,
                             PositiveInt)
from cl_bench.strategies.base import Strategy

log = logging.getLogger(__name__)


#: the layer types peft's LoRA wraps that a backbone's targets may name
ADAPTABLE = (nn.Linear, nn.Conv3d, nn.Conv2d)


def _adaptable(encoder: nn.Module) -> dict[str, nn.Module]:
    """``{name: layer}`` of the encoder's layers peft LoRA can wrap (:data:`ADAPTABLE`)."""
    return {n: m for n, m in encoder.named_modules() if type(m) in ADAPTABLE}


def _width(m: nn.Module) -> int:
    """min(in, out) features / channels of a Linear or convolution."""
    if isinstance(m, nn.Linear):
        return min(m.in_features, m.out_features)
    return min(m.in_channels, m.out_channels)


def matches_target(name: str, targets) -> bool:
    """Whether the layer path ``name`` ends with one of ``targets`` on a component boundary
    (peft's rule for a list of ``target_modules``: ``attn.qkv`` matches
    ``swinViT.layers1.0.blocks.0.attn.qkv``, ``qkv`` matches it too)."""
    return any(name == t or name.endswith("." + t) for t in targets)


def default_targets(encoder: nn.Module) -> list[str]:
    """The encoder's own LoRA targets (``lora_targets``); a MONAI ViT's attention projections
    ``["qkv", "out_proj"]`` for an encoder that declares none."""
    return list(getattr(encoder, "lora_targets", ("qkv", "out_proj")))


def check_target_modules(model: nn.Module, target_modules: list[str] | None,
                         linear_only: str | None = None) -> list[str]:
    """The backbone layers to adapt (``nn.Linear``; ``nn.Conv3d``/``Conv2d`` too, e.g. a shared
    Swin UNETR decoder's convolutions), checked; returns the names to give peft.

    ``model`` is a :class:`~cl_bench.models.continual.ContinualModel`. A name matches a layer whose dotted
    path ends with it on a component boundary (:func:`matches_target`; MONAI ViT: ``qkv``,
    ``out_proj``, ``linear1``, ``linear2``; Swin: ``attn.qkv``, ``attn.proj``,
    ``mlp.linear1``, ``mlp.linear2``). ``None`` gives the backbone's default (``lora_targets``
    of the encoder: its attention projections, and a shared decoder's convolutions).

    ``linear_only``: a method defined on ``nn.Linear`` weight matrices and token features (its
    name, e.g. ``"duallora"``). The backbone's default is then cut to its targets that are
    Linear layers (a Swin UNETR's decoder convolutions are left frozen, which is logged), and a
    named target that is not a Linear layer is refused.

    Raises:
        ConfigError: (``strategy.target_modules``) a name that matches no adaptable backbone
        layer (lists the Linear layers' names); with ``linear_only``, a name that matches a
        convolution, or a backbone whose default targets hold no Linear layer.
    """
    enc = model.encoder
    default = target_modules is None
    layers = _adaptable(enc)
    linear_names = sorted({n.rsplit(".", 1)[-1] for n, m in layers.items()
                           if isinstance(m, nn.Linear)})
    if default and not hasattr(enc, "lora_targets") and not linear_names:
        convs = sorted({".".join(n.split(".")[-2:]) for n in layers})
        raise ConfigError(f"strategy.target_modules: the backbone ({type(enc).__name__}) has no "
                          f"attention layers and declares no LoRA targets; name the layers to "
                          f"adapt, among its convolutions {convs[:8]}"
                          f"{' ...' if len(convs) > 8 else ''}")
    if default:
        target_modules = default_targets(enc)
    unknown = sorted(t for t in target_modules if not any(matches_target(n, [t]) for n in layers))
    if unknown:
        raise ConfigError(f"strategy.target_modules: {unknown} not found among the backbone's "
                          f"Linear layers {linear_names}")
    if linear_only:
        convs = [t for t in target_modules
                 if any(matches_target(n, [t]) and not isinstance(m, nn.Linear)
                        for n, m in layers.items())]
        if convs and not default:
            raise ConfigError(f"strategy.target_modules: {convs} are convolutions; "
                              f"strategy={linear_only} is defined on Linear layers (weight "
                              f"matrices acting on tokens); choose among {linear_names}")
        target_modules = [t for t in target_modules if t not in convs]
        if not target_modules:
            raise ConfigError(f"strategy={linear_only}: the backbone's default targets "
                              f"{default_targets(enc)} hold no Linear layer; set "
                              f"strategy.target_modules to some of {linear_names}")
        if convs:
            log.info("strategy=%s adapts the backbone's Linear targets %s; %s (convolutions) "
                     "stay frozen: the method is defined on Linear layers", linear_only,
                     target_modules, convs)
    return list(target_modules)


def lora_delta(layer: LoraLayer, name: str) -> torch.Tensor:
    """The unscaled update ``B A`` of adapter ``name`` of a peft LoRA layer as a matrix:
    ``(d_out, d_in)`` for a Linear, ``(C_out, C_in * k^3)`` for a convolution (its weight
    flattened as ``weight.flatten(1)``; peft's conv ``B`` is a 1x1x1 convolution)."""
    return layer.lora_B[name].weight.flatten(1) @ layer.lora_A[name].weight.flatten(1)


def check_rank(model: nn.Module, target_modules: list[str], rank: int,
               key: str = "strategy.rank") -> None:
    """A LoRA rank above a targeted layer's width is not low-rank (and costs more than the layer).

    Raises:
        ConfigError: (``key``) ``rank`` > min(in, out features) of a targeted ``nn.Linear``;
            names the narrowest layer.
    """
    widths = {n: _width(m) for n, m in _adaptable(model.encoder).items()
              if matches_target(n, target_modules)}
    if widths:
        narrowest = min(widths, key=widths.get)
        if rank > widths[narrowest]:
            raise ConfigError(f"{key}: {rank} exceeds the width of targeted layer {narrowest!r} "
                              f"({widths[narrowest]}); use a rank <= {widths[narrowest]}")


def add_adapter(model: nn.Module, name: str, config: LoraConfig) -> PeftModel:
    """Give ``model.backbone`` the peft LoRA adapter ``name`` (wrapping it in peft the first
    time; an adapter that already exists, e.g. when resuming, is kept). Returns the PeftModel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns about custom (non-transformers) models
        if not isinstance(model.backbone, PeftModel):
            model.backbone = get_peft_model(model.backbone, config, adapter_name=name)
        elif name not in model.backbone.peft_config:
            model.backbone.add_adapter(name, config)
    return model.backbone


def lora_layers(encoder: nn.Module) -> dict[str, LoraLayer]:
    """``{module name: LoraLayer}`` of the peft-injected layers of ``encoder`` (stable names
    relative to the encoder, e.g. ``vit.blocks.0.attn.qkv``)."""
    return {n: m for n, m in encoder.named_modules() if isinstance(m, LoraLayer)}


class LoRAFamily(Strategy):
    """What the low-rank adapter strategies share (``lora``, ``olora``, ``reglora``,
    ``inflora``, ``duallora``): the adapter settings, the list of adapters (one per task, in
    stream order), the peft adapter of a task, ``setup``'s check of the target modules, the
    saved adapters and the resumable state. A method's own file overrides only what differs.

    Args:
        rank: adapter rank r.
        alpha: scale numerator (peft's ``lora_alpha``; scale ``alpha / rank``).
        dropout: dropout on the adapter input, in [0, 1).
        target_modules: the backbone's ``nn.Linear`` modules to adapt (names as in
            :func:`check_target_modules`); ``None``: the backbone's ``lora_targets``.
        lr, head_lr, weight_decay: optimiser settings (adapters at ``lr``, head at ``head_lr``).

    Attributes:
        adapters: adapter (= task) names in the order they were added.

    Raises:
        ConfigError: an argument outside its annotation (``strategy.<key>``); at ``setup``, a
            target module the backbone does not have (``strategy.target_modules``).
    """

    #: the key of :attr:`adapters` in :meth:`state_dict` (``state.pt``)
    adapters_key = "adapters"
    #: True for a method defined on Linear weight matrices and token features (its default
    #: targets are the backbone's Linear ones; :func:`check_target_modules`)
    linear_only = False

    def __init__(self, rank: PositiveInt = 8, alpha: PositiveFloat = 16.0,
                 dropout: OpenFraction = 0.0, target_modules: NonEmptyStrList | None = None,
                 lr: PositiveFloat = 1e-3, head_lr: PositiveFloat = 3e-3,
                 weight_decay: NonNegativeFloat = 0.0):
        super().__init__(lr=lr, head_lr=head_lr, weight_decay=weight_decay)
        self.rank, self.alpha, self.dropout = int(rank), float(alpha), float(dropout)
        self.target_modules = None if target_modules is None else list(target_modules)
        self.adapters: list[str] = []

    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        """Attach to the model; resolve and check the target modules (:func:`check_target_modules`).

        Raises:
            ConfigError: as :meth:`Strategy.setup`; a target module the backbone does not have.
        """
        super().setup(model, stream)
        self.target_modules = check_target_modules(model, self.target_modules,
                                                   self.name if self.linear_only else None)

    def _config(self, targets: list[str] | None = None) -> LoraConfig:
        """The peft ``LoraConfig`` of an adapter (rank, alpha, dropout, ``targets`` or
        :attr:`target_modules`, no bias)."""
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules if targets is None else targets,
                          bias="none")

    def task_targets(self, task: Task) -> list[str]:
        """:attr:`target_modules` that ``task``'s forward pass uses: a task whose head does not
        read a shared decoder (``backbone.decoder=shared``; e.g. the age head, on the final
        stage) gets no adapter in the decoder, which never runs for it (adapters there would
        be counted as trainable and never receive a gradient)."""
        enc = self.model.encoder
        head = self.model.heads[task.name] if task.name in self.model.heads else None
        if getattr(enc, "decoder", None) is None or getattr(head, "reads_decoder", False):
            return list(self.target_modules)
        used = [n.replace(".base_layer", "") for n in _adaptable(enc)  # also once peft wrapped
                if not n.startswith("decoder.")]
        return [t for t in self.target_modules if any(matches_target(n, [t]) for n in used)]

    def add_task_adapter(self, task: Task) -> PeftModel:
        """Give the backbone ``task``'s peft adapter (kept if it exists, e.g. when resuming) on
        :meth:`task_targets`, and list it in :attr:`adapters`; returns the PeftModel
        (:func:`add_adapter`)."""
        backbone = add_adapter(self.model, task.name, self._config(self.task_targets(task)))
        if task.name not in self.adapters:
            self.adapters.append(task.name)
        return backbone

    def lora_layers(self) -> dict[str, LoraLayer]:
        """``{matrix name: peft LoraLayer}`` of the adapted layers (names relative to the
        encoder, e.g. ``vit.blocks.0.attn.qkv``)."""
        return lora_layers(self.model.encoder)

    def save(self, run_dir: Path, t: int, task: Task) -> None:
        """``adapters/<task>/`` in peft's layout (``adapter_model.safetensors``,
        ``adapter_config.json``), written in a temporary directory and renamed into place."""
        def write(out: Path) -> None:
            # peft puts an adapter that is not named "default" in <directory>/<name>/
            self.model.backbone.save_pretrained(str(out), selected_adapters=[task.name])
            for f in (out / task.name).iterdir():
                f.rename(out / f.name)
            (out / task.name).rmdir()

        atomic_dir(Path(run_dir) / "adapters" / task.name, write)

    def state_dict(self) -> dict:
        """What resuming needs: the adapter names (a subclass adds its own state)."""
        return {self.adapters_key: list(self.adapters)}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`'s adapter names (kept as they are if absent)."""
        self.adapters = list(state.get(self.adapters_key, self.adapters))


class LoRA(LoRAFamily):
    """Per-task peft LoRA adapters on a frozen backbone.

    Args:
        rank: LoRA rank r (> 0).
        alpha: LoRA scaling numerator (scale = alpha / rank, > 0).
        dropout: dropout on the LoRA input, in [0, 1).
        target_modules: the backbone's ``nn.Linear`` modules to adapt (MONAI ViT: ``qkv``,
            ``out_proj``, ``linear1``, ``linear2``; Swin: ``attn.qkv``, ``attn.proj``,
            ``mlp.linear1``, ``mlp.linear2``); ``None``: the backbone's attention projections.
        lr, head_lr, weight_decay: optimiser settings (adapters at ``lr``, head at ``head_lr``).

    Raises:
        ConfigError: an argument outside its annotation (rank/alpha not positive, dropout out
            of range, an empty target list), or a target module the backbone does not have
            (raised at ``setup``, naming ``strategy.target_modules``).
    """

    name = "lora"
    needs_task_id = True

    # __init__: LoRAFamily's (its defaults are LoRA's: r=8, alpha=16, no dropout, the
    # backbone's attention projections)

    def check_model(self, model: nn.Module) -> None:
        """The rank against the targeted layers' widths, before any data are made (unknown
        target names are reported by :meth:`setup`, after the stream-level checks)."""
        targets = self.target_modules
        if targets is None:
            targets = default_targets(model.encoder)
        check_rank(model, targets, self.rank)

    def setup(self, model: nn.Module, stream: list[Task]) -> None:
        super().setup(model, stream)
        check_rank(model, self.target_modules, self.rank)

    def before_task(self, t: int, task: Task) -> None:
        self.add_task_adapter(task)
        self.activate(task)
        self.model.requires_grad_(False)
        for n, p in self.model.backbone.named_parameters():
            if "lora_" in n and f".{task.name}." in n:
                p.requires_grad_(True)
        self.model.heads[task.name].requires_grad_(True)

    def activate(self, task: Task) -> None:
        backbone = self.model.backbone
        if not isinstance(backbone, PeftModel):
            return
        if task.name in self.adapters:
            backbone.base_model.enable_adapter_layers()
            backbone.set_adapter(task.name)
        else:  # an unseen task: the frozen foundation model without any adapter
            backbone.base_model.disable_adapter_layers()
