"""VVTQ's module-dependent quantization of the vision transformers (Huang, Shen & Cheng 2023).

"Variation-aware Vision Transformer Quantization" (arXiv 2307.00331; code HuangOwen/VVTQ @b9349f8,
``quantization/DeiT_quant.py`` and ``Swin_quant.py``) quantizes DeiT and Swin module by module. For a
precision of ``b``-bit weights and ``a``-bit activations (``a = None``: weights only) :func:`quantize`
applies its policy to timm's DeiT-T and Swin-T:

============================  =============  =========================================  ====================
module (timm)                 weight         input / operand quantizers                 VVTQ
============================  =============  =========================================  ====================
patch embedding ``proj``      8 bits         8-bit signed (the normalized image)        ``PatchEmbed.quant``
attention ``q``, ``k``, ``v`` ``b``, a step  one ``a``-bit signed quantizer shared by   ``proj_q/k/v``,
(the fused ``qkv`` split)     each           the three inputs                           ``quant_input``
``q``, ``k``, ``v`` outputs   --             ``a``-bit signed each (operands of q k^T,  ``quant_q/k/v``
                                             attn v)
softmax probabilities         --             ``a``-bit **unsigned**, after dropout      ``quant_attn``
attention ``proj``            ``b``          ``a``-bit signed (attn v)                  ``quant_output``
MLP ``fc1``                   ``b``          ``a``-bit signed                           ``quant1``
MLP ``fc2``                   ``b``          ``a``-bit unsigned with a learned offset   ``quant2``
                                             (the GELU output dips to -0.17)            (``offset=True``)
Swin ``PatchMerging``         8 bits         none                                       ``reduction``
classifier head               8 bits         8-bit signed                               ``quant``, ``head``
============================  =============  =========================================  ====================

LayerNorms, biases, the class token, position embeddings and Swin's relative position bias stay float, and
attention scores (``q k^T`` times the scale, plus Swin's bias and shift mask) and the softmax are computed
in float, as VVTQ does. Its optional head-wise steps (``--head-wise``, not in its README command) and
learned bit widths (``--mixpre``) are not implemented. Quantizers are LSQ's (:mod:`qgen.quant`), not VVTQ's
variants of them (MSE-fitted initial weight steps, an L1 gradient scale; docs/decisions.md). The
oscillation regularizer and the distillation are training objectives: :mod:`qgen.objective`.
"""

from __future__ import annotations

from timm.layers import Attention, Mlp, PatchEmbed
from timm.models.swin_transformer import PatchMerging, WindowAttention
from torch import Tensor, nn

from qgen.errors import QgenError
from qgen.quant import QUANTIZABLE, ActivationQuantizer, QuantizedLayer, quantize_layer, quantized_matmul

EMBED_HEAD_BITS = 8
"""Bits of the patch embedding's and the head's weights and inputs, and of Swin's patch merging."""


class _SplitAttention(nn.Module):
    """What VVTQ's two attention modules share: ``q``, ``k``, ``v`` projections and the operand quantizers.

    ``q``, ``k`` and ``v`` replace the fused ``qkv`` projection (``Linear(dim, 3 * attn_dim)``, rows in that
    order); ``q_quantizer``, ``k_quantizer``, ``v_quantizer`` and ``attn_quantizer`` quantize the operands of
    the two products (``None``: float).
    """

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    q_quantizer: ActivationQuantizer | None
    k_quantizer: ActivationQuantizer | None
    v_quantizer: ActivationQuantizer | None
    attn_quantizer: ActivationQuantizer | None
    num_heads: int
    scale: float
    attn_drop: nn.Dropout
    proj: nn.Linear
    proj_drop: nn.Dropout

    def _heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``q``, ``k``, ``v`` of the tokens ``x`` (B, N, C), each (B, heads, N, head dim)."""
        batch, tokens, _ = x.shape
        return tuple(
            layer(x).reshape(batch, tokens, self.num_heads, -1).permute(0, 2, 1, 3)
            for layer in (self.q, self.k, self.v)
        )

    def _scores(self, q: Tensor, k: Tensor) -> Tensor:
        """``q_hat k_hat^T * scale`` (VVTQ scales after the product)."""
        return quantized_matmul(q, self.q_quantizer, k.transpose(-2, -1), self.k_quantizer) * self.scale

    def _output(self, scores: Tensor, v: Tensor) -> Tensor:
        """``proj(quant(dropout(softmax(scores))) v_hat)`` merged over heads, then the output dropout."""
        attn = self.attn_drop(scores.softmax(dim=-1))
        x = quantized_matmul(attn, self.attn_quantizer, v, self.v_quantizer)
        batch, _, tokens, _ = x.shape
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(batch, tokens, -1)))


class SplitAttention(_SplitAttention, Attention):
    """timm's ViT ``Attention`` with split, separately quantized projections (VVTQ's DeiT ``Attention``)."""

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise QgenError("the VVTQ attention takes no attention mask (DeiT attends to every token)")
        q, k, v = self._heads(x)
        return self._output(self._scores(q, k), v)


class SplitWindowAttention(_SplitAttention, WindowAttention):
    """timm's Swin ``WindowAttention`` with split, separately quantized projections (VVTQ
    ``Swin_quant.WindowAttention``); the relative position bias and the shift mask are added in float."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        q, k, v = self._heads(x)
        tokens = x.shape[1]
        scores = self._scores(q, k) + self._get_rel_pos_bias()
        if mask is not None:
            windows = mask.shape[0]
            scores = scores.view(-1, windows, self.num_heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0)
            scores = scores.view(-1, self.num_heads, tokens, tokens)
        return self._output(scores, v)


_SPLIT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    Attention: SplitAttention,
    WindowAttention: SplitWindowAttention,
}


def split_attention(attn: nn.Module) -> nn.Module:
    """Replace ``attn``'s fused ``qkv`` Linear by ``q``, ``k``, ``v`` Linears with its rows (in place).

    The module computes the same function (no quantizer is attached yet); the three projections take the
    place of ``qkv`` among its submodules. Attention variants VVTQ does not have (query/key norms, a gate,
    a norm before the projection) are refused.
    """
    split_class = _SPLIT_CLASSES.get(type(attn))
    if split_class is None:
        raise QgenError(
            f"cannot split the attention of a {type(attn).__name__}; known: {list(_SPLIT_CLASSES)}"
        )
    extras = [
        name
        for name in ("q_norm", "k_norm", "norm")
        if not isinstance(getattr(attn, name, None), nn.Identity | None)
    ]
    if extras or getattr(attn, "gate", None) is not None:
        raise QgenError(
            f"VVTQ's attention has no {extras or ['gate']}; cannot split this {type(attn).__name__}"
        )
    fused = attn.qkv
    rows = fused.out_features // 3
    projections = {}
    for index, name in enumerate("qkv"):
        layer = nn.Linear(fused.in_features, rows, bias=fused.bias is not None)
        layer.to(fused.weight.device, fused.weight.dtype)
        layer.weight.data.copy_(fused.weight.detach()[index * rows : (index + 1) * rows])
        if fused.bias is not None:
            layer.bias.data.copy_(fused.bias.detach()[index * rows : (index + 1) * rows])
        projections[name] = layer
    modules = {}
    for name, module in attn._modules.items():
        modules |= projections if name == "qkv" else {name: module}
    attn._modules = modules
    attn.__class__ = split_class
    for name in ("q_quantizer", "k_quantizer", "v_quantizer", "attn_quantizer"):
        attn.register_module(name, None)
    return attn


def quantize(model: nn.Module, weight_bits: int | None, activation_bits: int | None) -> nn.Module:
    """Apply VVTQ's module policy (module docstring) to a timm DeiT or Swin model, in place.

    ``weight_bits=None`` (FP32) returns the model unchanged. Every conv/linear layer ends up quantized; a
    model with another layout is refused, naming the layers the policy did not reach.
    """
    if weight_bits is None:
        return model

    def inputs(signed: bool, offset: bool = False, bits: int | None = None) -> ActivationQuantizer | None:
        """A quantizer of ``bits`` (default: the precision's activation bits); ``None`` for weights only."""
        if activation_bits is None:
            return None
        return ActivationQuantizer(bits or activation_bits, signed, offset)

    for module in list(model.modules()):
        if isinstance(module, tuple(_SPLIT_CLASSES)):
            split_attention(module)
            shared = inputs(signed=True)
            for layer in (module.q, module.k, module.v):
                quantize_layer(layer, weight_bits, shared)
            for name in ("q_quantizer", "k_quantizer", "v_quantizer"):
                module.register_module(name, inputs(signed=True))
            module.register_module("attn_quantizer", inputs(signed=False))
            quantize_layer(module.proj, weight_bits, inputs(signed=True))
        elif isinstance(module, Mlp):
            quantize_layer(module.fc1, weight_bits, inputs(signed=True))
            quantize_layer(module.fc2, weight_bits, inputs(signed=False, offset=True))
        elif isinstance(module, PatchEmbed):
            quantize_layer(module.proj, EMBED_HEAD_BITS, inputs(signed=True, bits=EMBED_HEAD_BITS))
        elif isinstance(module, PatchMerging):
            quantize_layer(module.reduction, EMBED_HEAD_BITS, None)
    quantize_layer(model.get_classifier(), EMBED_HEAD_BITS, inputs(signed=True, bits=EMBED_HEAD_BITS))
    missed = [
        n
        for n, m in model.named_modules()
        if isinstance(m, QUANTIZABLE) and not isinstance(m, QuantizedLayer)
    ]
    if missed:
        raise QgenError(
            f"the VVTQ policy did not reach {missed} of {type(model).__name__}; it knows DeiT and Swin"
        )
    return model
