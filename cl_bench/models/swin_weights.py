"""Loading public 3D Swin-transformer checkpoints into :class:`cl_bench.models.swin.SwinEncoder`.

The encoder is MONAI's ``SwinTransformer``, the ``swinViT`` of Swin UNETR (Hatamizadeh et al.
2022, arXiv 2201.01266). Its public weights come in a handful of layouts, all read here into the
*same* strict load (every ``SwinTransformer`` key present, no unexpected encoder key, equal shapes):

1. **MONAI's released SSL Swin weights** ``model_swinvit.pt`` (Tang et al. 2022, arXiv
   2111.14791): ``{"state_dict": {"module.<SwinTransformer key>": tensor}}``, with the MLP layers
   named ``mlp.fc1`` / ``mlp.fc2`` where MONAI's current module has ``mlp.linear1`` /
   ``mlp.linear2``. Verified against ``SwinUNETR.load_from`` and ``SwinTransformerBlock.load_from``
   of the installed MONAI (``monai/networks/nets/swin_unetr.py``): they read
   ``module.patch_embed.proj.*``, per block ``module.layers{s}.0.blocks.{b}.{norm1, attn.
   relative_position_bias_table, attn.relative_position_index, attn.qkv, attn.proj, norm2,
   mlp.fc1, mlp.fc2}.*`` and ``module.layers{s}.0.downsample.{reduction, norm}.*``; the
   ``fc1``/``fc2`` naming of the file is also reported in Project-MONAI/research-contributions
   issue #346 and the missing ``swinViT.`` in issue #268. A final ``norm.weight`` / ``norm.bias``
   (older Swin code has one; MONAI's ``SwinTransformer`` has none and ``load_from`` does not read
   it) is ignored and counted -- *assumed*, not seen in the released file.
2. **SSL pre-training checkpoints** of MONAI's ``SwinUNETR/Pretrain`` code
   (Project-MONAI/research-contributions ``SwinUNETR/Pretrain/models/ssl_head.py``: ``SSLHead``
   holds ``swinViT``, ``rotation_head``, ``contrastive_head`` and the reconstruction ``conv``;
   ``main.py`` saves ``{"global_step", "state_dict": model.state_dict(), "optimizer"}``, the model
   wrapped in ``DistributedDataParallel`` when distributed, hence ``module.``). Older copies name
   the encoder ``swin_vit`` (research-contributions PR #88, and the ``swin_vit`` -> ``swinViT``
   renaming in ``SwinUNETR/BTCV/main.py``). The SSL heads are dropped and counted.
   BrainSegFounder's stage-1/2 SSL checkpoints (Cox et al. 2024, arXiv 2406.10395) are of this
   kind: verified in lab-smile/BrainSegFounder (``pretrain/models/ssl_head.py`` is the same
   ``SSLHead`` with configurable depths/heads/in_channels; ``pretrain/main.py`` and
   ``main_T1T2.py`` save ``{"global_step", "epoch", "state_dict", "optimizer"}`` of the DDP
   model; ``downstream/BraTS/finetuning/main_FinetuningSwinUNETR_4Channels.py`` reads the encoder
   of such a file as the keys starting with ``module.swinViT.``).
3. **Full MONAI ``SwinUNETR`` state dicts** (``swinViT.*`` and the decoder ``encoder1/2/3/4/10``,
   ``decoder1..5``, ``out``), as saved by research-contributions ``SwinUNETR/BTCV|BRATS21/
   trainer.py::save_checkpoint`` and BrainSegFounder's ``downstream/BraTS/finetuning/trainer.py``
   (verified: ``{"epoch", "best_acc", "state_dict": model.state_dict()}``, the state dict of the
   unwrapped model when distributed, so without ``module.``; ``best_acc`` is a numpy scalar), and
   under Lightning (``{"state_dict": {"model.swinViT...."}}``) or DataParallel (``module.``)
   wrappers. Encoder tensors go to the encoder, decoder tensors are returned (keys relative to
   ``SwinUNETR``, e.g. ``out.conv.conv.weight``). Assumed: the decoder was built with
   ``use_v2=False`` (``use_v2=True`` checkpoints hold ``swinViT.layers1c.*`` and are refused).
4. ``.safetensors`` files with any of these key layouts (cl_bench's shipped Swin checkpoint is a
   safetensors of ``{"swinViT.<SwinTransformer key>": tensor}``).

Wrappers: the state dict is taken from the first of the keys ``state_dict``, ``model``, ``net``,
``model_state_dict`` holding a dict (repeatedly); key prefixes ``module.`` (DataParallel/DDP),
``model.`` / ``net.`` / ``backbone.`` (Lightning modules) and ``_orig_mod.`` (``torch.compile``)
are stripped. Buffers that are a deterministic function of the configuration
(``attn.relative_position_index``) are taken from the model when a checkpoint lacks them.

Safety: torch pickles are read with ``torch.load(map_location="cpu", weights_only=True)`` only.
Checkpoints of the training scripts above also pickle an ``argparse.Namespace`` or numpy scalars
(``best_acc``); those few data-only classes are allowlisted for a second attempt
(:data:`SAFE_EXTRA_GLOBALS`); anything else is refused with the one-off conversion command.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cl_bench.errors import DataError
from cl_bench.models.backbones import load_strict, resolve_weights
from cl_bench.models.weights import (WRAPPER_PREFIXES, log_detail, read_checkpoint,
                                     unwrap_state_dict)

log = logging.getLogger(__name__)

#: names under which a Swin UNETR / SSL model stores its SwinTransformer
SWIN_PREFIXES = ("swinViT.", "swin_vit.")
#: top-level modules of MONAI's SwinTransformer (keys of a bare encoder state dict)
SWIN_ROOTS = frozenset({"patch_embed", "layers1", "layers2", "layers3", "layers4"})
#: Swin UNETR's decoder modules (use_v2=False)
DECODER_ROOTS = frozenset({"encoder1", "encoder2", "encoder3", "encoder4", "encoder10", "decoder1",
                           "decoder2", "decoder3", "decoder4", "decoder5", "out",
                           # ours: narrows stage 4 when the decoder is thinner than the encoder
                           # (cl_bench.models.swin.SwinDecoder; not in MONAI's Swin UNETR)
                           "encoder5"})
#: heads of MONAI's / BrainSegFounder's ``SSLHead`` (rotation, contrastive, reconstruction)
SSL_HEAD_ROOTS = frozenset({"rotation_pre", "rotation_head", "contrastive_pre", "contrastive_head",
                            "conv"})
KNOWN_ROOTS = SWIN_ROOTS | DECODER_ROOTS | SSL_HEAD_ROOTS
#: encoder keys of older Swin code that MONAI's SwinTransformer lacks and ``load_from`` never reads
LEGACY_IGNORED = frozenset({"norm.weight", "norm.bias"})
#: buffers computed from the configuration alone; taken from the model when a checkpoint lacks them
DERIVED_BUFFERS = ("attn.relative_position_index",)

CONFIG_KEYS = "backbone.in_channels/feature_size/window_size/depths/num_heads"
ACCEPTED = ("MONAI's SSL release model_swinvit.pt ({'state_dict': "
            "{'module.patch_embed.proj.weight', 'module.layers1.0.blocks.0.mlp.fc1.weight', "
            "...}}), an SSL-head or Swin UNETR state dict with keys "
            "'swinViT.<SwinTransformer key>' or 'swin_vit.<...>' (optionally under "
            "'state_dict'/'model' and 'module.'/'model.' prefixes), or a .safetensors file with "
            "the same keys")


@dataclass
class SwinKeys:
    """A checkpoint's state dict sorted by role (see :func:`split_swin_keys`)."""

    encoder: dict[str, torch.Tensor] = field(default_factory=dict)
    decoder: dict[str, torch.Tensor] = field(default_factory=dict)
    ssl_heads: list[str] = field(default_factory=list)
    legacy: list[str] = field(default_factory=list)
    unknown: dict[str, torch.Tensor] = field(default_factory=dict)
    stripped: set[str] = field(default_factory=set)
    encoder_prefixes: set[str] = field(default_factory=set)
    renamed_mlp: int = 0

    @property
    def layout(self) -> str:
        if self.encoder_prefixes == {""}:
            kind = ("MONAI SSL release (module.<SwinTransformer key>, as model_swinvit.pt)"
                    if "module." in self.stripped else "bare SwinTransformer state dict")
        elif self.decoder:
            kind = "Swin UNETR state dict (swinViT.* + decoder)"
        elif self.ssl_heads:
            kind = "SSL pre-training state dict (SSLHead: swinViT.* + SSL heads)"
        else:
            kind = "SwinTransformer state dict under swinViT."
        notes = [f"encoder named {p.rstrip('.')}" for p in sorted(self.encoder_prefixes) if p
                 and p != "swinViT."]
        if self.stripped:
            notes.append("prefixes " + "/".join(sorted(self.stripped)) + " stripped")
        if self.renamed_mlp:
            notes.append("mlp.fc1/fc2 renamed to linear1/linear2")
        return kind + (f" [{'; '.join(notes)}]" if notes else "")


def split_swin_keys(sd: Mapping[str, torch.Tensor], path: Path) -> SwinKeys:
    """Sort a state dict's keys into encoder, Swin UNETR decoder, SSL heads and the rest.

    Wrapper prefixes (:data:`WRAPPER_PREFIXES`) are stripped until a key starts with a known
    module. Encoder keys are those under ``swinViT.`` / ``swin_vit.`` or starting with a
    SwinTransformer module (``patch_embed``, ``layers1``..``layers4``, layout 1), renamed
    ``mlp.fc1``/``mlp.fc2`` -> ``mlp.linear1``/``mlp.linear2``. Decoder keys keep their name
    relative to ``SwinUNETR`` (``encoder1.layer.conv1.conv.weight``, ``out.conv.conv.weight``).

    Returns:
        a :class:`SwinKeys`; keys matching nothing are in ``unknown`` (the strict load reports
        them as unexpected).

    Raises:
        DataError: two checkpoint keys map to the same encoder key.
    """
    keys = SwinKeys()
    sources: dict[str, str] = {}
    for original, value in sd.items():
        name = original
        while True:
            root = name.split(".", 1)[0]
            if name.startswith(SWIN_PREFIXES) or root in KNOWN_ROOTS:
                break
            prefix = next((p for p in WRAPPER_PREFIXES if name.startswith(p)), None)
            if prefix is None:
                break
            keys.stripped.add(prefix)
            name = name[len(prefix):]
        swin_prefix = next((p for p in SWIN_PREFIXES if name.startswith(p)), None)
        if swin_prefix is None and root in SWIN_ROOTS:
            swin_prefix = ""
        if swin_prefix is None and name in LEGACY_IGNORED:
            keys.legacy.append(original)
        elif swin_prefix is not None:
            enc = name[len(swin_prefix):]
            if enc in LEGACY_IGNORED:
                keys.legacy.append(original)
                continue
            renamed = re.sub(r"\.mlp\.fc([12])\.", r".mlp.linear\1.", enc)
            keys.renamed_mlp += renamed != enc
            if renamed in keys.encoder:
                raise DataError(f"backbone.weights: {path} holds two tensors for the encoder key "
                                f"{renamed} ({sources[renamed]} and {original})")
            keys.encoder[renamed], sources[renamed] = value, original
            keys.encoder_prefixes.add(swin_prefix)
        elif root in DECODER_ROOTS:
            keys.decoder[name] = value
        elif root in SSL_HEAD_ROOTS:
            keys.ssl_heads.append(original)
        else:
            keys.unknown[name] = value
    return keys


def describe_swin(sd: Mapping[str, torch.Tensor]) -> str:
    """The Swin configuration a SwinTransformer state dict implies, e.g. ``in_channels=1,
    feature_size=48, window_size=7, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24)`` (the parts
    that can be read off the shapes: patch embedding ``(feature_size, in_channels, 2, 2, 2)``,
    relative-position tables ``((2 * window_size - 1) ** 3, heads)``)."""
    parts = []
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.dim() == 5:
        parts += [f"in_channels={w.shape[1]}", f"feature_size={w.shape[0]}"]
    depths, heads, windows = [], [], set()
    for s in range(1, 5):
        blocks = {int(m.group(1)) for k in sd
                  if (m := re.match(rf"layers{s}\.0\.blocks\.(\d+)\.", k))}
        depths.append(len(blocks))
        table = sd.get(f"layers{s}.0.blocks.0.attn.relative_position_bias_table")
        if table is not None and table.dim() == 2:
            heads.append(table.shape[1])
            side = round(table.shape[0] ** (1 / 3))
            if side ** 3 == table.shape[0]:
                windows.add((side + 1) // 2)
    if len(windows) == 1:
        parts.append(f"window_size={windows.pop()}")
    if any(depths):
        parts.append(f"depths={tuple(depths)}")
    if len(heads) == 4:
        parts.append(f"num_heads={tuple(heads)}")
    return ", ".join(parts) or "unknown"


def load_swin_checkpoint(swin: nn.Module, weights: str | Path) -> dict[str, torch.Tensor]:
    """Load a Swin checkpoint's encoder into ``swin`` strictly; return its Swin UNETR decoder.

    Args:
        swin: MONAI's ``SwinTransformer`` (``SwinEncoder.swinViT``), loaded in place.
        weights: a shipped checkpoint name (``cl_bench.models.backbones.PRETRAINED``) or a path to a
            ``.safetensors`` / torch file in one of the layouts of the module docstring (MONAI's
            ``model_swinvit.pt``, SSL-head, Swin UNETR and BrainSegFounder checkpoints).

    Returns:
        the checkpoint's Swin UNETR decoder tensors ``{key relative to SwinUNETR: tensor}`` (e.g.
        ``encoder1.layer.conv1.conv.weight``, ``decoder5.transp_conv.conv.weight``,
        ``out.conv.conv.weight``), wrapper prefixes removed; empty when the file has no decoder.

    Raises:
        ConfigError: an unknown shipped name (from ``resolve_weights``).
        DataError: a missing or unreadable file, a pickle with non-allowlisted classes (with the
        conversion command), no Swin encoder key at all (accepted layouts and keys found listed),
        or an encoder that does not fit: missing / unexpected keys and shape mismatches (e.g.
        ``patch_embed.proj.weight`` for another ``backbone.in_channels``) all listed, with the
        configuration the checkpoint implies and the config keys to check.

    Sources: Swin UNETR, Hatamizadeh et al. 2022 (arXiv 2201.01266); MONAI SSL Swin, Tang et al.
    2022 (arXiv 2111.14791); BrainSegFounder, Cox et al. 2024 (arXiv 2406.10395).
    """
    path = resolve_weights(str(weights))
    sd, trail = unwrap_state_dict(read_checkpoint(path), path)
    keys = split_swin_keys(sd, path)
    if not keys.encoder:
        shown = ", ".join(list(sd)[:5]) + (f" … (+{len(sd) - 5} more)" if len(sd) > 5 else "")
        raise DataError(f"backbone.weights: {path} holds no Swin transformer encoder tensor "
                        f"({len(sd)} keys: {shown or 'none'}); accepted layouts: {ACCEPTED}")
    own = swin.state_dict()
    encoder = {**keys.encoder, **keys.unknown}
    derived = [k for k in own if k.endswith(DERIVED_BUFFERS) and k not in encoder]
    for k in derived:
        encoder[k] = own[k]
    mine = describe_swin(own)
    theirs = describe_swin(keys.encoder)
    hint = CONFIG_KEYS
    if theirs != mine:
        hint += f" (the checkpoint implies {theirs}; configured: {mine})"
    if any(re.match(r"layers\dc\.", k) for k in keys.encoder):
        hint += ("; the checkpoint is a Swin UNETR v2 (use_v2=True), which backbone=swin_unetr "
                 "does not build")
    load_strict(swin, encoder, path, "Swin encoder (swinViT)", hint)
    wrapper = "".join(f"[{k!r}]" for k in trail) or "none"
    log_detail(log, "loaded %d Swin encoder tensors from %s (layout: %s; wrapper %s); %d Swin UNETR "
               "decoder tensors found, %d SSL-head keys ignored, %d legacy keys ignored, %d "
               "buffers taken from the model", len(keys.encoder), path, keys.layout, wrapper,
               len(keys.decoder), len(keys.ssl_heads), len(keys.legacy), len(derived))
    return keys.decoder
