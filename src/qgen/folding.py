"""Fold BatchNorm into the convolution or linear layer that feeds it (eval-mode semantics).

The flatness measures (PAC-Bayes bounds and sharpness, Jiang et al., "Fantastic Generalization
Measures and Where to Find Them", ICLR 2020, arXiv:1912.02178; Dziugaite et al., "In Search of Robust
Measures of Generalization", NeurIPS 2020) perturb the weights of a network whose BatchNorm layers
are folded into the preceding layer, so that a BN cannot undo a perturbation of its layer's scale.
In eval mode ``BN(Wx + b)`` is the affine map ``W'x + b'`` with, per output channel,

    scale = gamma / sqrt(running_var + eps)              (gamma = 1 without affine parameters)
    W'    = scale * W                                    (scaling the output channel's filter)
    b'    = beta + scale * (b - running_mean)            (b = 0 for a bias-free layer)

The reference code (nitarshan/robust-generalization-measures, ``_reparam``) pairs each BN with the
last convolution met in *definition* order; that misfolds any model whose modules are defined in a
different order than they run, fails on bias-free convolutions and ignores ``Linear`` and
``BatchNorm1d``. Here layers are paired by the traced data flow (:func:`torch.fx.symbolic_trace`):
a BN is folded only when its sole input is the output of a conv/linear layer and nothing else reads
that output. The folded model keeps the original module tree, with each folded BN replaced by
:class:`FoldedBatchNorm` (an :class:`~torch.nn.Identity`), so parameter names stay those of the unfolded
model. The reference code instead leaves each folded BN in place as an *identity BN* (gamma 1, beta 0,
running mean 0, running variance 1, its ``eps`` kept, so it computes ``x / sqrt(1 + eps)``) whose gamma
and beta it then perturbs with the weights; :func:`with_identity_batchnorm` rebuilds that network.
"""

from __future__ import annotations

import copy
from collections import Counter
from typing import TypeAlias, cast

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights, fuse_linear_bn_weights

FoldableLayer: TypeAlias = nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear
"""Layers whose output channel is dimension 0 of the weight, so a BN can be folded into them."""

BatchNorm: TypeAlias = nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d

_BATCHNORM_KINDS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class FoldedBatchNorm(nn.Identity):
    """The identity that :func:`fold_batchnorm` puts where it folded a BN away.

    It remembers the BN's kind (1d/2d/3d), feature count, ``eps``, whether it had affine parameters and its
    training flag, so that :meth:`identity_batchnorm` can rebuild the BN the reference code leaves after
    its fold.
    """

    def __init__(self, bn: BatchNorm) -> None:
        super().__init__()
        self.kind: type[BatchNorm] = next(kind for kind in _BATCHNORM_KINDS if isinstance(bn, kind))
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.affine = bn.affine
        self.train(bn.training)

    def identity_batchnorm(self, like: torch.Tensor) -> BatchNorm:
        """The folded BN as the reference code leaves it (Dziugaite et al., ``_reparam``).

        ``_reparam`` fills gamma with 1, beta with 0, the running mean with 0 and the running variance
        with 1 and keeps ``eps``: the values of a freshly built BN, which in eval mode computes
        ``x / sqrt(1 + eps)``. The BN gets ``like``'s device and dtype and this module's training flag.
        """
        bn = self.kind(
            self.num_features, eps=self.eps, affine=self.affine, device=like.device, dtype=like.dtype
        )
        return bn.train(self.training)

    def extra_repr(self) -> str:
        return f"{self.kind.__name__}({self.num_features}, eps={self.eps}, affine={self.affine}) folded"


def folded_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(layer name, BN name)`` of every BN that :func:`fold_batchnorm` folds, in execution order.

    A BN module is paired with a conv/linear module when, in the graph traced by
    :func:`torch.fx.symbolic_trace`:

    * the BN's only input is the layer's output and the BN is that output's only user;
    * each of the two modules is called once and nothing else in the graph reads it (a reused layer
      or BN, or a weight read directly in ``forward``, would change elsewhere);
    * the BN tracks running statistics (without them it normalizes with batch statistics even in
      eval mode, which no affine map reproduces) and has one feature per output channel.

    Every other BN, for instance one applied to the sum of a residual block, is not paired. A
    ``Linear`` -> ``BatchNorm1d`` pair assumes ``(N, C)`` activations: on a ``(N, L, C)`` Linear
    output, BatchNorm1d would normalize dimension ``L``, which the registry models never do.

    A model without BatchNorm modules gives ``[]`` without being traced (the timm transformers, with
    LayerNorm only, need not be traceable). Raises ``ValueError`` naming the model class if tracing
    fails.
    """
    if not any(isinstance(m, BatchNorm) for m in model.modules()):
        return []
    graph = _trace(model)
    modules = dict(model.named_modules())
    references = _reference_counts(graph)
    return [pair for node in graph.nodes if (pair := _pair_of(node, modules, references)) is not None]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every BN of :func:`folded_pairs` folded into its layer.

    The folded layer gets ``W' = scale * W`` and ``b' = beta + scale * (b - running_mean)`` (a bias
    parameter is created for a bias-free layer) and the BN is replaced by :class:`FoldedBatchNorm`, an
    ``nn.Identity``. The fold
    reproduces the *eval-mode* function: a BN in training mode is folded with its running statistics
    too. BN layers that are not paired stay as they are, and the copy keeps ``model``'s training
    flag. ``model`` itself is not modified.

    Raises ``ValueError`` naming the layer if a layer or BN to fold is parametrized (e.g. an LSQ
    quantizer on its weight): folding would bake in one value of the latent weight and drop the
    parametrization; call :func:`materialize_weights` first.
    """
    folded = copy.deepcopy(model)
    pairs = folded_pairs(folded)
    for layer_name, bn_name in pairs:
        for name in (layer_name, bn_name):
            _require_unparametrized(folded.get_submodule(name), name)
    for layer_name, bn_name in pairs:
        layer = cast(FoldableLayer, folded.get_submodule(layer_name))
        bn = cast(BatchNorm, folded.get_submodule(bn_name))
        _fold_into(layer, bn)
        folded.set_submodule(bn_name, FoldedBatchNorm(bn))
    return folded


def with_identity_batchnorm(folded: nn.Module) -> nn.Module:
    """A deep copy of a :func:`fold_batchnorm` result with every :class:`FoldedBatchNorm` replaced by its
    identity BN (:meth:`FoldedBatchNorm.identity_batchnorm`): the folded network of the reference code.

    In eval mode it computes the folded function up to a factor ``1 / sqrt(1 + eps)`` at each BN (about
    ``1 - 5e-6`` for the default ``eps``). Module and parameter names are those of the unfolded model,
    the identity BNs' gamma and beta included; the BNs take the device and dtype of ``folded``'s first
    parameter. A model without folded BNs is returned as a plain copy.
    """
    copy_ = copy.deepcopy(folded)
    for name, marker in [(n, m) for n, m in copy_.named_modules() if isinstance(m, FoldedBatchNorm)]:
        copy_.set_submodule(name, marker.identity_batchnorm(next(copy_.parameters())))
    return copy_


def materialize_weights(model: nn.Module, *, quantized: bool = True) -> nn.Module:
    """A deep copy of ``model`` with every parametrization (e.g. the LSQ quantizers) removed.

    ``quantized=True`` keeps the parametrized values as plain parameters: the quantized weights
    ``w_hat`` of paper eq. 2, so the copy computes the same function as the quantized model.
    ``quantized=False`` keeps the latent float weights the optimizer updates (``parametrizations.
    weight.original``), which changes the function to that of the unquantized network. Either way the
    learned steps disappear and weights are named ``<layer>.weight`` again. ``model`` itself is not
    modified.
    """
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if parametrize.is_parametrized(module):
            _own_class(module)
            for tensor_name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=quantized)
    return plain


def _own_class(module: nn.Module) -> None:
    """Give a parametrized ``module`` a private copy of its ``Parametrized<Layer>`` class.

    :func:`copy.deepcopy` shares the class that :mod:`torch.nn.utils.parametrize` injects between a
    module and its copy, and ``remove_parametrizations`` deletes the parametrized property from that
    class, which would leave the original module without its ``weight`` (PyTorch 2.14).
    """
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def _trace(model: nn.Module) -> fx.Graph:
    """The data-flow graph of ``model``'s forward, or a ``ValueError`` naming the model class."""
    try:
        return fx.symbolic_trace(model).graph
    except Exception as error:  # user forward code may raise anything under tracing
        raise ValueError(
            f"cannot fold BatchNorm of {type(model).__name__}: torch.fx.symbolic_trace failed "
            f"({type(error).__name__}: {error}); layers are paired by the traced data flow, so the "
            "forward must be symbolically traceable"
        ) from error


def _pair_of(
    node: fx.Node, modules: dict[str, nn.Module], references: Counter[str]
) -> tuple[str, str] | None:
    """``(layer name, BN name)`` if ``node`` calls a BN that can be folded (see :func:`folded_pairs`)."""
    if node.op != "call_module" or len(node.all_input_nodes) != 1:
        return None
    source = node.all_input_nodes[0]
    if source.op != "call_module" or len(source.users) != 1:
        return None
    layer, bn = modules[source.target], modules[node.target]
    foldable = (
        isinstance(layer, FoldableLayer)
        and isinstance(bn, BatchNorm)
        and references[source.target] == references[node.target] == 1
        and bn.running_mean is not None
        and bn.num_features == layer.weight.shape[0]
    )
    return (source.target, node.target) if foldable else None


def _reference_counts(graph: fx.Graph) -> Counter[str]:
    """Module path -> number of graph nodes that call it or read an attribute at or below it."""
    counts: Counter[str] = Counter()
    for node in graph.nodes:
        if node.op in ("call_module", "get_attr"):
            parts = str(node.target).split(".")
            counts.update(".".join(parts[:end]) for end in range(1, len(parts) + 1))
    return counts


def _require_unparametrized(module: nn.Module, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` if ``module`` carries a parametrization."""
    if parametrize.is_parametrized(module):
        tensors = ", ".join(module.parametrizations)
        raise ValueError(
            f"cannot fold BatchNorm: layer {name!r} ({type(module).__name__}) has parametrized "
            f"{tensors}; materialize the quantized weights first, e.g. with "
            "qgen.folding.materialize_weights(model) or torch.nn.utils.parametrize."
            'remove_parametrizations(layer, "weight", leave_parametrized=True)'
        )


@torch.no_grad()
def _fold_into(layer: FoldableLayer, bn: BatchNorm) -> None:
    """Replace ``layer``'s weight and bias by those of ``bn(layer(x))`` in eval mode.

    The arithmetic is PyTorch's own (``torch.nn.utils.fusion``), run in float64 and cast back to the
    layer's dtype, so that folding adds no float32 rounding to the weights the measures perturb.
    """
    mean = bn.running_mean.double()
    gamma = torch.ones_like(mean) if bn.weight is None else bn.weight.double()
    beta = torch.zeros_like(mean) if bn.bias is None else bn.bias.double()
    bias = None if layer.bias is None else layer.bias.double()
    fuse = fuse_linear_bn_weights if isinstance(layer, nn.Linear) else fuse_conv_bn_weights
    var = bn.running_var.double()
    weight, folded_bias = fuse(layer.weight.double(), bias, mean, var, bn.eps, gamma, beta)
    dtype, trainable = layer.weight.dtype, layer.weight.requires_grad
    layer.weight = nn.Parameter(weight.detach().to(dtype), trainable)
    layer.bias = nn.Parameter(folded_bias.detach().to(dtype), trainable)
