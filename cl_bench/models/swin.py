"""The Swin-transformer backbone of 3D foundation models, and its heads.

The encoder is MONAI's ``SwinTransformer`` (Liu et al. 2021, arXiv 2103.14030; 3D as the
``swinViT`` of Swin UNETR, Hatamizadeh et al. 2022, arXiv 2201.01266), the encoder public 3D
brain-MRI foundation models are built on: MONAI's self-supervised Swin (Tang et al. 2022, arXiv
2111.14791) and BrainSegFounder (Cox et al. 2024, arXiv 2406.10395). It is stored under the
attribute ``swinViT`` so its state-dict keys are those of MONAI's ``SwinUNETR``. Its Linear layers
are ``attn.qkv``, ``attn.proj``, ``mlp.linear1``, ``mlp.linear2`` (peft LoRA targets ``qkv``,
``proj``, ``linear1``, ``linear2``).

The foundation model can be a whole Swin UNETR: with ``decoder=True`` the encoder holds Swin
UNETR's decoder (:class:`SwinDecoder` without its output layer), pretrained and shared by the
tasks (``backbone.decoder=shared``, the default; BrainSegFounder's setting, arXiv 2406.10395),
whose full-resolution features are the sixth entry of its outputs.

Heads:

* :class:`DecoderOutputHead`: a segmentation task's 1x1x1 output layer on the shared decoder's
  features (the paper's budget).
* :class:`SwinDecoder` is Swin UNETR's decoder (module names as in MONAI's ``SwinUNETR``: a
  residual block on each encoder stage, up-sampling blocks with skips); as a per-task head
  (``backbone.decoder=unetr``, the earlier protocol, an ablation) it reads the encoder's five
  stages (1/2 ... 1/32 of the input side). Deviation: by default there is no ``encoder1``, Swin
  UNETR's convolutional block on the *raw image* at full resolution; the last stage is then a
  transposed convolution from 1/2 to full resolution. ``image_skip=True`` restores Swin UNETR
  exactly (so a fine-tuned Swin UNETR's decoder weights fit). Leaving out ``encoder1`` does
  *not* make the decoder depend on the Swin blocks: its stage-0 input is the patch embedding, a
  Conv3d 1 -> C, kernel 2, stride 2, i.e. a linear (and, for C >= 8, invertible) re-encoding of
  the image at half resolution, which the decoder's 5 M parameters can segment from on their
  own. How much the decoder relies on each stage is measured, not assumed: every run with a
  segmentation task writes the reliance probe (:mod:`cl_bench.probes`).
* :class:`LinearSegmentationHead`: a linear probe on the five stages (the paper-like budget).
* :class:`PooledRegressionHead`: the global average of the final stage, layer-normed (or
  standardised by running statistics) -> linear: a linear probe; :class:`PooledClassificationHead`:
  the global average of every stage, concatenated, layer-normed -> linear.

:class:`SwinHeads` builds them with the head settings of ``conf/backbone/swin_unetr.yaml``;
:func:`make_swin_model` is that file's factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import annotated_types as at
import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.nets.swin_unetr import BasicLayer, WindowAttention, compute_mask
from monai.networks.nets.swin_unetr import get_window_size
from torch import nn

from cl_bench.data.base import Task
from cl_bench.errors import ConfigError
from cl_bench.models.backbones import GridFeatures, check_input, load_strict
from cl_bench.models.continual import ContinualModel, HeadFactory
from cl_bench.ranges import Fraction, NonNegativeInt, PositiveInt, checked

#: the Linear layers of a Swin block, as peft ``target_modules`` names
SWIN_LINEARS = ("qkv", "proj", "linear1", "linear2")
#: peft LoRA targets in a shared Swin UNETR decoder: the two 3x3x3 convolutions of each of its
#: residual blocks (MONAI ``UnetResBlock.conv1/conv2``; peft's LoRA wraps ``nn.Conv3d`` but not
#: the transposed convolutions, which stay frozen)
DECODER_LORA_TARGETS = ("conv1.conv", "conv2.conv")


class FusedWindowAttention(WindowAttention):
    """MONAI's Swin window attention, computed by PyTorch's fused
    :func:`torch.nn.functional.scaled_dot_product_attention` under autograd too.

    MONAI's ``WindowAttention(use_flash_attention=True)`` takes the fused kernel only when
    autograd is off (inference) and otherwise materialises ``softmax(Q K^T / sqrt(d) + B) V`` op
    by op. This subclass takes MONAI's fused path always: the additive mask is the relative
    position bias ``B`` (plus the shifted-window mask, see :attr:`seam_value`), as in MONAI.
    Same function, same parameters and state-dict keys; PyTorch picks the kernel (its
    flash-attention CPU kernel when the bias needs no gradient, e.g. a frozen backbone with
    LoRA; its math path when the bias trains, e.g. full fine-tuning). In fp32 it made the main
    job's lora step 0.82x (tumour) and 0.70x (age) as long (``scripts/bench_speed_options.py``,
    results/reference/bench/swin_speed_options/).

    Shapes: ``x`` ``(B * windows, N, C)`` tokens of each window, ``mask`` ``None`` or
    ``(windows, N, N)`` (0 / -100, shifted windows); returns ``(B * windows, N, C)``.
    Source: Liu et al. 2021 (Swin, arXiv 2103.14030), eq. 4; MONAI ``swin_unetr.WindowAttention``.
    """

    #: the additive mask of the token pairs across a shifted window's seams. MONAI's -100
    #: gives them softmax weights ~e^-100: float32 denormals, on which the fused kernel's
    #: backward ran 2.4x slower on x86 (a stage-1 block of the main job; the whole job's step
    #: ``default_seams_100`` in scripts/bench_speed_options.py). -inf makes them exact zeros.
    #: With the flash kernel (the bias frozen: lora and the other adapter strategies) the main
    #: job came out the same to the bit (600 steps of both tasks: R and R_val); the math kernel
    #: (the bias trains: seq_ft) rounds differently now and then (seq_ft's 30-step job: val Dice
    #: 0.07778 vs 0.07782). Both mean "masked": they differ beyond rounding only where a seam
    #: pair's score exceeds its row's maximum by ~100, where -100 would let attention leak
    #: across the seam (Swin, arXiv 2103.14030, masks it out).
    seam_value: float = float("-inf")
    #: keep the shifted-window bias while the table is frozen (see :meth:`attention_bias`;
    #: False only to measure what that saves)
    reuse_bias: bool = True
    #: (key, mask, bias): the last shifted-window bias built while the table was frozen
    _seam_bias: tuple | None = None

    def attention_bias(self, n: int, mask: torch.Tensor | None, b: int) -> torch.Tensor:
        """The additive attention mask: the relative position bias ``B`` ``(1, h, n, n)``, plus
        the seams of a shifted window ``(b, h, n, n)`` (``mask`` ``(windows, n, n)``, 0 / -100;
        ``b`` windows of the batch). While ``B``'s table needs no gradient (a frozen backbone, or
        no autograd) the shifted-window mask is built once and reused until the table, the
        batch, the seam value, the mask (the same tensor object: :class:`MaskReusingLayer`
        keeps one per grid) or inference mode changes (the table's version counter catches
        in-place updates); building it cost ~6 % of a frozen-backbone step of the main job
        (``default_uncached`` in scripts/bench_speed_options.py)."""
        h, table = self.num_heads, self.relative_position_bias_table
        frozen = self.reuse_bias and not (table.requires_grad and torch.is_grad_enabled())
        key = (table.device, table.data_ptr(), table._version, b, self.seam_value,
               torch.is_inference_mode_enabled())
        found = self._seam_bias
        if (mask is not None and frozen and found is not None and found[0] == key
                and found[1] is mask):
            return found[2]
        bias = table[self.relative_position_index[:n, :n].reshape(-1)].reshape(n, n, h
                                                                                ).permute(2, 0, 1)
        if mask is None:
            return bias.unsqueeze(0)
        nw = mask.shape[0]
        seams = mask.to(bias.dtype).masked_fill(mask < 0, self.seam_value)
        bias = (bias.view(1, 1, h, n, n) + seams.reshape(1, nw, 1, n, n)
                ).expand(b // nw, nw, h, n, n).reshape(b, h, n, n)
        self._seam_bias = (key, mask, bias) if frozen else None
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4)
        bias = self.attention_bias(n, mask, b)
        drop = self.attn_drop.p if self.training else 0.0
        # in fp32 under bf16 autocast too: PyTorch's CPU kernels for a bf16 attention with an
        # additive mask and 8-wide heads ran ~2x slower than fp32 (scripts/bench_speed_options.py)
        with torch.autocast(x.device.type, enabled=False):
            x = nn.functional.scaled_dot_product_attention(
                q.float(), k.float(), v.float(), attn_mask=bias.float(), dropout_p=drop,
                scale=self.scale)
        return self.proj_drop(self.proj(x.to(v.dtype).transpose(1, 2).reshape(b, n, c)))


class MaskReusingLayer(BasicLayer):
    """MONAI's Swin stage (``BasicLayer``: its blocks, then the patch merging) with the
    shifted-window mask made once per grid instead of at every forward.

    MONAI builds the mask (``compute_mask``: the 27 regions of the shifted grid, partitioned into
    windows) at every call: 12 ms for the main job's 32^3 grid, ~3 % of a frozen-backbone step.
    It depends only on the padded grid, the window and shift sizes, the device and whether
    inference mode is on (an inference tensor cannot enter autograd), so it is kept per those.
    Otherwise MONAI's forward: the same blocks on the same mask, the same results to the bit.

    Shapes: ``x`` ``(B, C, D, H, W)`` -> ``(B, 2C, D/2, H/2, W/2)`` (``(B, C, D, H, W)`` without
    merging); 2-D inputs take MONAI's forward unchanged.
    Source: Liu et al. 2021 (Swin, arXiv 2103.14030), sec. 3.2; MONAI ``swin_unetr.BasicLayer``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or getattr(self, "use_hyena", False):
            return super().forward(x)
        b, _, d, h, w = x.shape
        window, shift = get_window_size((d, h, w), self.window_size, self.shift_size)
        padded = [-(-side // k) * k for side, k in zip((d, h, w), window)]
        key = (tuple(padded), tuple(window), tuple(shift), x.device,
               torch.is_inference_mode_enabled())
        masks = self.__dict__.setdefault("_masks", {})  # the class is swapped in: no __init__
        if key not in masks:
            masks[key] = compute_mask(padded, window, shift, x.device)
        x = x.permute(0, 2, 3, 4, 1)  # b c d h w -> b d h w c (a view, as MONAI's rearrange)
        for block in self.blocks:
            x = block(x, masks[key])
        x = x.view(b, d, h, w, -1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.permute(0, 4, 1, 2, 3)


#: the input side of the Swin encoder: five stages of 2x down-sampling, and the instance norms of
#: the deepest stage need 2^3 voxels
SwinSide = Annotated[int, at.Ge(64), at.MultipleOf(32)]


class SwinEncoder(GridFeatures, nn.Module):
    """MONAI's 3D Swin transformer (``swinViT`` of Swin UNETR) as the stream's shared encoder.

    Args:
        in_channels: image channels C (BrainSegFounder: 1 for T1, 2 for T1 + T2).
        img_size: cubic input side in voxels; a multiple of 32 (five stages), at least 64.
        feature_size: embedding width of stage 1 (doubles per stage; BrainSegFounder and MONAI's
            SSL Swin: 48).
        depths, num_heads: blocks and attention heads per stage (Swin UNETR: (2, 2, 2, 2),
            (3, 6, 12, 24)).
        window_size: attention window side (Swin UNETR: 7). Windows of 4 divide every stage of a
            64^3 input and are ~8x faster on CPU than 7 (no padding, no masked partial windows).
            The relative-position table depends on it, so a released checkpoint needs its own
            value (7).
        normalize: layer-normalise every stage output before the heads (MONAI ``SwinUNETR``'s
            ``normalize``, default there True). Default False here: the normalisation is over the
            channels of each voxel, and on the stage-1 patch embedding of a 1-channel image
            (a linear map of 2^3 voxels) it discards most of the intensity *magnitude*; Swin
            UNETR recovers it through its raw-image ``encoder1``, which we leave out. (Chosen by
            that argument; an earlier docstring quoted a test-set Dice for it, which is no
            reason: choices are made on validation data.)
        weights: ``None`` (random init), a shipped checkpoint name or a path to a Swin checkpoint
            in one of the layouts of :func:`cl_bench.models.swin_weights.load_swin_checkpoint`.
        decoder_weights: ``"drop"`` (default) ignores a checkpoint's Swin UNETR decoder keys;
            ``"keep"`` keeps them in :attr:`pretrained_decoder` for the segmentation heads.
        decoder: ``True`` gives the backbone Swin UNETR's decoder (:class:`SwinDecoder` without its
            output layer, shared by every task; the foundation model is then a whole Swin
            UNETR, as BrainSegFounder's, arXiv 2406.10395): :meth:`forward` appends its
            full-resolution features to the stages, and a checkpoint's decoder tensors load
            into it strictly (a checkpoint without any is refused; ``weights=None``: random).
        decoder_feature_size, decoder_fp32, decoder_channels_last: that decoder's width at 1/2
            resolution, precision and layout (:class:`SwinDecoder`).
        fused_attention: window attention through PyTorch's fused
            ``scaled_dot_product_attention`` in training as well as at inference (default True;
            see :class:`FusedWindowAttention`). False: MONAI's explicit softmax(QK^T + B)V under
            autograd (its fused path only without autograd). Same function; float rounding and
            speed differ (the lora step of the main job: ``scripts/bench_step_profile.py``).

    Shapes:
        input ``(B, C, S, S, S)``; output ``(deepest, stages)``: ``stages`` the five stage outputs
        ``(B, feature_size * 2**k, S / 2**(k+1), ...)``, k = 0..4, then, with ``decoder``, the
        decoder's features ``(B, decoder_feature_size, S, S, S)`` (unless :attr:`run_decoder` is
        off); ``deepest`` is ``stages[4]``. :meth:`encode` and :meth:`decode` are the two halves.

    Raises:
        ConfigError: an input side below 64 or not divisible by 32 (:data:`SwinSide`), a
        feature size not divisible by the heads, an unknown ``decoder_weights``, a shared
        ``decoder`` with a checkpoint that has none (``backbone.decoder``); DataError: an
        unreadable or misfitting checkpoint.
    """

    spatial_dims = 3
    patch_size = 2
    #: the backbone's own peft LoRA targets: the attention projections of every block (with a
    #: shared decoder also its residual blocks' 3x3x3 convolutions, :data:`DECODER_LORA_TARGETS`)
    lora_targets: tuple[str, ...] = ("attn.qkv", "attn.proj")
    #: the shared decoder runs in :meth:`forward` (``ContinualModel`` turns it off for a call
    #: whose heads do not read it, e.g. the age head)
    run_decoder: bool = True
    #: hardware.precision=auto may pick bf16 autocast: with the segmentation decoder kept in fp32
    #: (backbone.decoder_fp32, the default) the main job's validation Dice and age MAE match fp32
    #: over 5 paired seeds (+0.001 Dice; with a bf16 decoder -0.006:
    #: results/reference/bench/swin_speed_options)
    AUTO_BF16 = True

    @checked("backbone")
    def __init__(self, in_channels: int = 1, img_size: SwinSide = 64, feature_size: int = 24,
                 depths: tuple[int, ...] = (2, 2, 2, 2), num_heads: tuple[int, ...] = (3, 6, 12, 24),
                 window_size: int = 4, dropout_rate: float = 0.0, normalize: bool = False,
                 weights: str | None = None, decoder_weights: Literal["drop", "keep"] = "drop",
                 fused_attention: bool = True, decoder: bool = False,
                 decoder_feature_size: int = 12, decoder_fp32: bool = False,
                 decoder_channels_last: bool = False):
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
        if len(depths) != 4 or len(num_heads) != 4:
            raise ConfigError(f"backbone.depths / backbone.num_heads: expected 4 stages each, got "
                              f"{list(depths)} / {list(num_heads)}")
        for k, h in enumerate(num_heads):
            if (feature_size * 2 ** k) % h:
                raise ConfigError(f"backbone.feature_size ({feature_size}) x 2^{k} must be "
                                  f"divisible by backbone.num_heads[{k}] ({h})")
        self.in_channels, self.img_size, self.feature_size = in_channels, img_size, feature_size
        self.window_size, self.normalize = window_size, bool(normalize)
        self.stage_channels = [feature_size * 2 ** k for k in range(5)]
        self.hidden_size = self.stage_channels[-1]
        self.num_layers = sum(depths)
        self.swinViT = SwinTransformer(
            in_chans=in_channels, embed_dim=feature_size, window_size=(window_size,) * 3,
            patch_size=(2,) * 3, depths=depths, num_heads=num_heads, mlp_ratio=4.0,
            qkv_bias=True, drop_rate=dropout_rate, attn_drop_rate=0.0, drop_path_rate=0.0,
            norm_layer=nn.LayerNorm, patch_norm=False, use_checkpoint=False, spatial_dims=3,
            downsample="merging", use_v2=False)
        self.fused_attention = bool(fused_attention)
        for m in self.swinViT.modules():  # the same parameters and buffers, in our classes
            if isinstance(m, BasicLayer):
                m.__class__ = MaskReusingLayer
            elif isinstance(m, WindowAttention) and self.fused_attention:
                m.__class__ = FusedWindowAttention
        self.weights, self.decoder_weights = weights, decoder_weights
        self.pretrained_decoder: dict[str, torch.Tensor] | None = None
        #: the shared decoder (``decoder=True``), else None
        self.decoder = (SwinDecoder(in_channels, self.stage_channels, decoder_feature_size, 0,
                                    fp32=decoder_fp32, channels_last=decoder_channels_last)
                        if decoder else None)
        #: channels of what :meth:`forward` returns: the stages, then the decoder's features
        self.feature_channels = self.stage_channels + ([decoder_feature_size] if decoder else [])
        if decoder:
            self.lora_targets = self.lora_targets + DECODER_LORA_TARGETS
        if weights:
            from cl_bench.models.swin_weights import load_swin_checkpoint
            found = load_swin_checkpoint(self.swinViT, weights)
            if decoder_weights == "keep":
                self.pretrained_decoder = found or None
            if self.decoder is not None:
                self._load_decoder(found, weights)

    def _load_decoder(self, found: dict[str, torch.Tensor], weights: str) -> None:
        """The checkpoint's decoder into :attr:`decoder`, strictly (its ``out`` layer, a
        pretraining head, is not part of the backbone)."""
        tensors = {k: v for k, v in found.items() if not k.startswith("out.")}
        if not tensors:
            raise ConfigError(f"backbone.decoder=shared: checkpoint {weights!r} holds no Swin "
                              "UNETR decoder; use a whole Swin UNETR checkpoint (e.g. "
                              "backbone.weights=swin_brain_fm) or backbone.decoder=unetr (a "
                              "decoder per task, trained from scratch)")
        load_strict(self.decoder, tensors, weights, "shared Swin UNETR decoder",
                    "backbone.decoder_feature_size (the checkpoint's decoder width)")

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five encoder stages of ``x`` ``(B, C, S, S, S)`` (see class docstring)."""
        check_input(x, self.in_channels, self.img_size, 3)
        return list(self.swinViT(x, self.normalize))

    def decode(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """The shared decoder's features ``(B, decoder_feature_size, S, S, S)`` from five stages.

        Raises:
            ValueError: the backbone has no shared decoder."""
        if self.decoder is None:
            raise ValueError("this Swin backbone has no shared decoder (backbone.decoder=shared)")
        return self.decoder(None, stages[4], stages, None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        stages = self.encode(x)
        if self.decoder is not None and self.run_decoder:
            stages.append(self.decode(stages))
        return stages[4], stages



class SwinDecoder(nn.Module):
    """Swin UNETR's decoder on the five stages of a :class:`SwinEncoder` (module docstring).

    Args:
        in_channels: image channels (used only with ``image_skip``).
        stage_channels: channels of the encoder's five stages.
        feature_size: the decoder's width at 1/2 resolution; its other widths follow Swin UNETR
            (``feature_size * (1, 1, 2, 4, 8, 16)``). Equal to the encoder's stage-1 width it is
            Swin UNETR's decoder; smaller, the stage-4 skip gets a residual block to narrow it
            (``encoder5``, not in Swin UNETR).
        out_channels: segmentation classes K including background; 0: no output layer, the
            decoder returns its full-resolution features ``(B, feature_size, S, S, S)`` (the
            shared, pretrained decoder of ``backbone.decoder=shared``, whose tasks each put a
            :class:`DecoderOutputHead` on them).
        image_skip: Swin UNETR's ``encoder1`` on the raw image (see module docstring).
        fp32: compute in float32 also under bfloat16 autocast (``hardware.precision=bf16-mixed``,
            or ``auto`` on a CPU with native bfloat16): the encoder's stages are cast to float32
            and autocast is off inside the decoder. Its weights are float32 either way; this
            keeps its activations and gradients there too (the layers trained from scratch, at
            full resolution). No effect in fp32 runs.
        channels_last: keep weights and activations in ``torch.channels_last_3d`` (oneDNN's
            preferred layout for 3D convolutions on CPU). Same function, other rounding.

    Shapes:
        ``forward(to_grid, deepest, stages, image)`` -> logits ``(B, K, S, S, S)`` (float32 with
        ``fp32``; contiguous), or the features ``(B, feature_size, S, S, S)`` when
        ``out_channels`` is 0. ``stages``: the encoder's five stages (a sixth entry is ignored).
    """

    def __init__(self, in_channels: int, stage_channels: list[int], feature_size: int,
                 out_channels: int, image_skip: bool = False, norm: str = "instance",
                 fp32: bool = False, channels_last: bool = False):
        super().__init__()
        self.fp32, self.channels_last = bool(fp32), bool(channels_last)
        fs, sd, (c0, c1, c2, c3, c4) = feature_size, 3, stage_channels
        self.image_skip = image_skip
        if image_skip:
            self.encoder1 = UnetrBasicBlock(sd, in_channels, fs, 3, 1, norm, res_block=True)
        self.encoder2 = UnetrBasicBlock(sd, c0, fs, 3, 1, norm, res_block=True)
        self.encoder3 = UnetrBasicBlock(sd, c1, 2 * fs, 3, 1, norm, res_block=True)
        self.encoder4 = UnetrBasicBlock(sd, c2, 4 * fs, 3, 1, norm, res_block=True)
        self.encoder5 = (nn.Identity() if c3 == 8 * fs
                         else UnetrBasicBlock(sd, c3, 8 * fs, 3, 1, norm, res_block=True))
        self.encoder10 = UnetrBasicBlock(sd, c4, 16 * fs, 3, 1, norm, res_block=True)
        self.decoder5 = UnetrUpBlock(sd, 16 * fs, 8 * fs, 3, 2, norm, res_block=True)
        self.decoder4 = UnetrUpBlock(sd, 8 * fs, 4 * fs, 3, 2, norm, res_block=True)
        self.decoder3 = UnetrUpBlock(sd, 4 * fs, 2 * fs, 3, 2, norm, res_block=True)
        self.decoder2 = UnetrUpBlock(sd, 2 * fs, fs, 3, 2, norm, res_block=True)
        if image_skip:
            self.decoder1 = UnetrUpBlock(sd, fs, fs, 3, 2, norm, res_block=True)
        else:  # one transposed convolution from 1/2 to full resolution
            self.decoder1 = UnetrPrUpBlock(sd, fs, fs, 0, 3, 1, 2, norm, False, True)
        self.out = UnetOutBlock(sd, fs, out_channels) if out_channels else None
        if self.channels_last:  # after the (seeded) initialisation: the same weights
            self.to(memory_format=torch.channels_last_3d)

    def forward(self, to_grid, deepest: torch.Tensor, stages: list[torch.Tensor],
                image: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            stages = [h.contiguous(memory_format=torch.channels_last_3d) for h in stages]
        if self.fp32:
            with torch.autocast(stages[0].device.type, enabled=False):
                out = self._decode([h.float() for h in stages],
                                   None if image is None else image.float())
        else:
            out = self._decode(stages, image)
        return out.contiguous() if self.channels_last else out

    def _decode(self, stages: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """The decoder proper (:meth:`forward` without the precision and layout handling)."""
        h0, h1, h2, h3, h4 = stages[:5]
        dec3 = self.decoder5(self.encoder10(h4), self.encoder5(h3))
        dec2 = self.decoder4(dec3, self.encoder4(h2))
        dec1 = self.decoder3(dec2, self.encoder3(h1))
        dec0 = self.decoder2(dec1, self.encoder2(h0))
        out = (self.decoder1(dec0, self.encoder1(image)) if self.image_skip
               else self.decoder1(dec0))
        return out if self.out is None else self.out(out)


def pool_stages(stages: list[torch.Tensor]) -> torch.Tensor:
    """Global average of each stage ``(B, C_k, *spatial)``, concatenated: ``(B, sum C_k)``."""
    return torch.cat([s.flatten(2).mean(-1) for s in stages], dim=1)


class PooledRegressionHead(nn.Module):
    """Global average of Swin stages, normalised -> linear (or MLP) -> one scalar.

    The default is a linear probe of the encoder's *final* stage (``stages=(4,)``, 1/32 of the
    input side: the representation a linear probe reads, MAE, He et al. 2022, arXiv 2111.06377):
    its global average, normalised, then a linear layer (``width=0``). Three normalisations
    (``norm``):

    * ``"train"`` (the flagship's default): each feature standardised by the mean and variance
      of the task's *training set*, computed once at task start on the backbone of that moment
      (:meth:`calibrate`) and frozen: MAE's affine-free BatchNorm probe with the statistics of
      the training data, and between-subject differences kept. Under full fine-tuning the
      backbone moves away from the statistics during the task; they are not updated (the
      ``"batch"`` norm tracks them, which made seq_ft's loss spike).
    * ``"layer"``: a layer norm without affine parameters over each subject's pooled
      features. It keeps no statistics, so it is valid for a frozen backbone and for one that
      trains alike (as the final LayerNorm before a ViT's linear probe, e.g. DINOv2, Oquab et
      al. 2023, arXiv 2304.07193).
      It removes most of the variance *between* subjects (on the first Swin stage, from 3.1e-3
      to 5.2e-4 of the mean square), which is what an age head must read.
    * ``"batch"``: MAE's BatchNorm without affine parameters, with one deviation: a batch of 2
      volumes gives no usable batch statistics (with two samples every standardised feature is
      +-1), so it always standardises with *running* statistics (``running_mean``,
      ``running_var``, BatchNorm's ``eps`` 1e-5): :meth:`calibrate` sets them from the whole
      training set on the current backbone before the task, and with :attr:`track` on (the
      runner sets it when the backbone or its adapters train) every training step moves them
      towards the batch's by ``momentum`` (no gradient through them). Exact for a frozen
      backbone; under full fine-tuning they lag the backbone, and features whose spread over
      subjects is small are amplified: seq_ft's age loss reached 1e3-1e5 in its first steps
      (``scripts/probes/age_head_drift_probe.py``), gradients that also hit the backbone. Not
      the default for that reason (a property of training, not a test score).

    ``rectify=True`` averages ``relu(stage)`` instead of the stage (a soft histogram of local
    patterns); with ``stages=(0, 1)`` it is the earlier shallow-stage head, kept as an ablation
    (``backbone.regression_stages=[0,1] backbone.regression_rectify=true``): brain age in the
    embedded stream is a global tissue-composition signal, which a rectified average of the
    linear stage-0 patch embedding reads almost directly, so that head is not a probe of the
    foundation model.

    With a shared decoder (``backbone.decoder=shared``) the backbone's outputs have a sixth
    entry, the decoder's full-resolution features: index 5 in ``stages`` pools them (the whole
    Swin UNETR's final representation; the decoder then runs for the task, :attr:`reads_decoder`).

    Args:
        stage_channels: channels of the backbone's outputs (five stages, and the decoder's
            features with a shared decoder); width: MLP hidden width, 0 = linear;
        stages: indices (0-4, 5 for the decoder) of the pooled outputs; rectify: ReLU before
            averaging;
        momentum: ``norm="batch"``: weight of a training batch's statistics in the running ones
            (default 0.01, an average over ~100 steps); norm: ``"train"``, ``"layer"`` or
            ``"batch"``.

    Shapes:
        ``forward(to_grid, deepest, stages, image)`` -> ``(B,)``; :meth:`pooled` -> ``(B, D)``.

    Raises:
        ConfigError: a stage index outside 0-4, or none; an unknown ``norm``.
    """

    #: variance floor of the standardisation (as BatchNorm's)
    eps = 1e-5

    @checked("backbone", keys={"width": "regression_width", "stages": "regression_stages",
                               "rectify": "regression_rectify", "norm": "regression_norm"})
    def __init__(self, stage_channels: list[int], width: int = 0,
                 stages: tuple[int, ...] = (4,), rectify: bool = False,
                 momentum: float = 0.01, norm: Literal["train", "batch", "layer"] = "layer"):
        super().__init__()
        stages = tuple(int(k) for k in stages)
        if not stages or any(k < 0 or k >= len(stage_channels) for k in stages):
            hint = (" (5 is the shared decoder's features: it needs backbone.decoder=shared)"
                    if 5 in stages and len(stage_channels) == 5 else "")
            raise ConfigError(f"backbone.regression_stages: expected indices in "
                              f"0..{len(stage_channels) - 1}, got {list(stages)}{hint}")
        self.stages, self.rectify, self.momentum = stages, bool(rectify), float(momentum)
        self.norm = norm
        #: the head pools the shared decoder's features (``ContinualModel`` runs the decoder)
        self.reads_decoder = len(stage_channels) > 5 and 5 in stages
        #: update the running statistics in training (set by ``ContinualModel.calibrate_head``)
        self.track = False
        d = int(sum(stage_channels[k] for k in stages))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))
        self.mlp = (nn.Linear(d, 1) if not width else
                    nn.Sequential(nn.Linear(d, width), nn.GELU(), nn.Linear(width, 1)))

    def pooled(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """``(B, D)`` averaged (``rectify``: ReLU-averaged) features of the head's stages."""
        return torch.cat([(stages[k].relu() if self.rectify else stages[k]).flatten(2).mean(-1)
                          for k in self.stages], dim=1)

    @torch.no_grad()
    def calibrate(self, pooled: torch.Tensor) -> None:
        """Set the running statistics from ``(N, D)`` pooled training features (mean and
        population variance)."""
        self.running_mean.copy_(pooled.mean(0))
        self.running_var.copy_(pooled.var(0, unbiased=False))

    def embed(self, deepest, stages) -> torch.Tensor:
        """``(B, D)`` pooled, standardised features (updates the running statistics in
        training when :attr:`track` is on)."""
        pooled = self.pooled(stages)
        if self.norm == "layer":  # per subject: no statistics to keep
            return nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=self.eps)
        if self.training and self.track and len(pooled) > 1:
            with torch.no_grad():
                p = pooled.detach().float()
                self.running_mean.lerp_(p.mean(0), self.momentum)
                self.running_var.lerp_(p.var(0, unbiased=True), self.momentum)
        return (pooled - self.running_mean) / (self.running_var + self.eps).sqrt()

    def forward(self, to_grid, deepest, stages, image) -> torch.Tensor:
        return self.mlp(self.embed(deepest, stages)).squeeze(-1)


class DecoderOutputHead(nn.Module):
    """A task's segmentation head on the shared, pretrained decoder: Swin UNETR's output layer
    (MONAI ``UnetOutBlock``: a 1x1x1 convolution, ``F * K + K`` parameters) on the decoder's
    full-resolution features, the last entry of the backbone's outputs
    (:class:`SwinEncoder` with ``decoder=True``). The paper-like budget with a pretrained
    decoder (BrainSegFounder, arXiv 2406.10395; the brain-MRI continual-learning study,
    arXiv 2602.23533: per-task LoRA on encoder and decoder plus a small head).

    Args:
        feature_size: F, the decoder's width; out_channels: classes K (with background).

    Shapes:
        ``forward(to_grid, deepest, stages, image)`` -> logits ``(B, K, S, S, S)`` float32.

    Raises:
        ValueError: the backbone's outputs hold no decoder features (5 entries).
    """

    #: reads the shared decoder's features (``ContinualModel`` runs the decoder for it)
    reads_decoder = True

    def __init__(self, feature_size: int, out_channels: int):
        super().__init__()
        self.out = UnetOutBlock(3, feature_size, out_channels)

    def forward(self, to_grid, deepest, stages: list[torch.Tensor], image) -> torch.Tensor:
        if len(stages) < 6:
            raise ValueError("DecoderOutputHead needs the shared decoder's features "
                             "(backbone.decoder=shared)")
        features = stages[5]
        with torch.autocast(features.device.type, enabled=False):
            return self.out(features.float()).contiguous()


class LinearSegmentationHead(nn.Module):
    """A linear segmentation probe on the five Swin stages: the paper-like parameter budget.

    Each stage k gets a 1x1x1 convolution to the K class logits, is up-sampled trilinearly to
    the input side (x 2^(k+1)) and the five maps are summed: a linear function of the
    encoder's features at every voxel (as DINOv2's linear segmentation probe reads patch
    tokens, Oquab et al. 2023, arXiv 2304.07193, here on every stage; up-sampling a linear map
    of the features equals a linear map of up-sampled features). ``sum C_k * K + 5 K``
    parameters (2,996 at the default widths with 4 classes) instead of the decoder's 5.3 M: with
    it, a per-task adapter and head are a small share of the model, as in the brain-MRI study
    (arXiv 2602.23533: < 0.1 %).

    Args:
        stage_channels: channels of the five stages; out_channels: classes K (with background).

    Shapes:
        ``forward(to_grid, deepest, stages, image)`` -> logits ``(B, K, S, S, S)``, S the
        input side.
    """

    def __init__(self, stage_channels: list[int], out_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(c, out_channels, kernel_size=1)
                                   for c in stage_channels)

    def forward(self, to_grid, deepest, stages: list[torch.Tensor], image) -> torch.Tensor:
        size = image.shape[2:]
        out = None
        for conv, h in zip(self.convs, stages):
            logits = nn.functional.interpolate(conv(h), size=size, mode="trilinear",
                                               align_corners=False)
            out = logits if out is None else out + logits
        return out


class PooledClassificationHead(nn.Module):
    """Pooled Swin stages -> LayerNorm -> linear classifier.

    Shapes:
        ``forward(to_grid, deepest, stages, image)`` -> logits ``(B, K)``.
    """

    def __init__(self, stage_channels: list[int], num_classes: int):
        super().__init__()
        d = int(sum(stage_channels))
        self.norm = nn.LayerNorm(d)
        self.fc = nn.Linear(d, num_classes)

    def forward(self, to_grid, deepest, stages, image) -> torch.Tensor:
        return self.fc(self.norm(pool_stages(stages[:5])))  # the encoder's (no decoder)


@dataclass(frozen=True)
class SwinHeads(HeadFactory):
    """The heads of a :class:`SwinEncoder`, with the head settings of ``conf/backbone/swin_unetr``.

    Args:
        decoder: segmentation head: ``"shared"`` (a :class:`DecoderOutputHead` on the backbone's
            own, pretrained decoder), ``"unetr"`` (a :class:`SwinDecoder` per task) or
            ``"linear"`` (:class:`LinearSegmentationHead`, the paper-like budget).
        decoder_feature_size, decoder_image_skip, decoder_fp32, decoder_channels_last: a
            per-task :class:`SwinDecoder`'s width at 1/2 resolution, raw-image skip, ``fp32`` and
            ``channels_last``.
        regression_width, regression_stages, regression_rectify, regression_norm: the
            :class:`PooledRegressionHead`'s ``width`` (0 = linear), ``stages``, ``rectify`` and
            ``norm``.

    Builds: segmentation -> as ``decoder``; regression -> :class:`PooledRegressionHead`
    (with a shared decoder its features are a sixth input, index 5); task-IL classification ->
    :class:`PooledClassificationHead`. Shared heads (class-IL, CISS) are refused.

    Raises:
        ConfigError: a shared head (naming the backbone); a kept checkpoint decoder
        (``backbone.decoder_weights=keep``) that does not fit a per-task decoder, or a bad
        regression setting (:class:`PooledRegressionHead`).
    """

    decoder: str = "unetr"
    decoder_feature_size: int = 12
    decoder_image_skip: bool = False
    regression_width: int = 0
    regression_stages: tuple[int, ...] = (4,)
    regression_rectify: bool = False
    regression_norm: str = "layer"
    decoder_fp32: bool = False
    decoder_channels_last: bool = False
    backbone = "swin_unetr"

    def build_decoder(self, task: Task, enc: SwinEncoder) -> nn.Module:
        """Swin UNETR's decoder or the linear head (module docstring). A checkpoint decoder
        kept by ``backbone.decoder_weights=keep`` initialises every segmentation decoder
        (strictly: same widths and image skip)."""
        if self.decoder == "linear":
            return LinearSegmentationHead(enc.stage_channels, task.num_classes)
        if self.decoder == "shared":
            return DecoderOutputHead(enc.feature_channels[-1], task.num_classes)
        head = SwinDecoder(enc.in_channels, enc.stage_channels, self.decoder_feature_size,
                           task.num_classes, self.decoder_image_skip,
                           fp32=self.decoder_fp32, channels_last=self.decoder_channels_last)
        if enc.pretrained_decoder:
            load_strict(head, enc.pretrained_decoder, enc.weights, "segmentation decoder",
                        "backbone.decoder_feature_size (= the checkpoint's feature_size), "
                        "backbone.decoder_image_skip=true and the task's classes, or "
                        "backbone.decoder_weights=drop")
        return head

    def build_regressor(self, task: Task, enc: SwinEncoder) -> nn.Module:
        """A pooled-stage regression head (:class:`PooledRegressionHead`)."""
        return PooledRegressionHead(enc.feature_channels, self.regression_width,
                                    self.regression_stages, self.regression_rectify,
                                    norm=self.regression_norm)

    def build_classifier(self, task: Task, enc: SwinEncoder) -> nn.Module:
        """A pooled-stage classifier (a task-IL task's own)."""
        return PooledClassificationHead(enc.stage_channels, task.num_classes)


def make_swin_model(in_channels: PositiveInt = 1, img_size: Annotated[int, at.Ge(64)] = 64,
                    feature_size: PositiveInt = 24, depths: list[PositiveInt] = (2, 2, 2, 2),
                    num_heads: list[PositiveInt] = (3, 6, 12, 24), window_size: PositiveInt = 4,
                    dropout_rate: Fraction = 0.0, normalize: bool = False,
                    weights: str | None = None, decoder_weights: Literal["drop", "keep"] = "drop",
                    decoder_feature_size: PositiveInt = 12, decoder_image_skip: bool = False,
                    regression_width: NonNegativeInt = 0,
                    regression_stages: list[NonNegativeInt] | None = None,
                    regression_rectify: bool = False,
                    decoder: Literal["shared", "unetr", "linear"] = "shared",
                    regression_norm: Literal["train", "batch", "layer"] = "train",
                    fused_attention: bool = True, decoder_fp32: bool = True,
                    decoder_channels_last: bool = True) -> ContinualModel:
    """Build a :class:`~cl_bench.models.continual.ContinualModel` on MONAI's Swin transformer
    (``conf/backbone/swin_unetr``, whose ``_target_`` names it by its earlier path,
    ``cl_bench.models.continual.make_swin_model``, an alias).

    Args: as :class:`SwinEncoder` plus the head settings of :class:`SwinHeads`
    (``decoder_feature_size``: the Swin UNETR decoder's width at 1/2 resolution;
    ``regression_width`` 0 = a linear regression head on the ``regression_stages`` (0-4: encoder
    stages; 5: the shared decoder's features; ``None``, the default: the backbone's final
    representation, 5 with ``decoder="shared"`` and 4 otherwise), averaged after a ReLU with
    ``regression_rectify``;
    ``decoder``: ``shared`` (the backbone's pretrained decoder), ``unetr`` or ``linear``;
    ``decoder_fp32`` / ``decoder_channels_last``: see :class:`SwinDecoder`).

    Raises:
        ConfigError: ``decoder_image_skip`` with the shared decoder (pretrained without one);
            and see :class:`SwinEncoder`. DataError: see there.
    """
    if decoder_image_skip and decoder == "shared":
        raise ConfigError("backbone.decoder_image_skip=true: the shared pretrained decoder "
                          "(backbone.decoder=shared) has no raw-image skip; use it with "
                          "backbone.decoder=unetr")
    if regression_stages is None:  # the final representation of what the backbone is
        regression_stages = (5,) if decoder == "shared" else (4,)
    enc = SwinEncoder(in_channels, img_size, feature_size, tuple(depths), tuple(num_heads),
                      window_size, dropout_rate, normalize, weights, decoder_weights,
                      fused_attention, decoder == "shared", decoder_feature_size,
                      bool(decoder_fp32), bool(decoder_channels_last))
    heads = SwinHeads(decoder, decoder_feature_size, decoder_image_skip, regression_width,
                      tuple(regression_stages), regression_rectify, regression_norm,
                      bool(decoder_fp32), bool(decoder_channels_last))
    return ContinualModel(enc, heads)
