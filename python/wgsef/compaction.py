"""Physically remove pruned channels: a smaller dense model with the same outputs.

:func:`compact` takes two routes and checks both on ``example_inputs``:

* Any traceable model: every coupled group (:mod:`wgsef.coupled`) whose slices are
  all zero is removed by Torch-Pruning (``pip install wgsef[prune]``).
* An ``nn.Sequential`` chain of the layers listed below (with :class:`Residual`
  blocks): the hand-written path, which needs no Torch-Pruning and adds one thing
  the coupled route does not do: it also removes a filter whose weights are zero
  but whose bias or batch-norm shift is not (what training with per-tensor
  ``"filters"`` groups leaves), folding that channel's constant output into the
  next layer's bias.

The hand-written path walks an ``nn.Sequential`` chain of ``Conv2d`` / ``BatchNorm2d`` /
``Linear`` layers with element-wise activations, pooling, dropout and one
``Flatten``. A conv filter (or linear row) whose weights are all zero produces a
channel that does not depend on the input: a constant (its bias, through the batch
norm and the activation). The channel is removed, together with its bias and
batch-norm entries and the matching input channels of the next layer; its
constant contribution is folded into the next layer's bias, which is exact when
the next layer is a ``Linear`` or a ``Conv2d`` without padding (with zero padding
the constant would reach the borders only partially, so such a channel is kept
unless its constant is exactly zero).

Residual blocks are written as :class:`Residual` (``body(x) + shortcut(x)``). Their
output channels are coupled to the block's input and to every other block on the
same path, so they stay; the channels inside the body (all its producers but the
last) are compacted like any chain.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["Residual", "compact", "count_macs", "count_params"]


class Residual(nn.Module):
    """``body(x) + shortcut(x)`` (identity shortcut when ``shortcut`` is None)."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


_PASS_THROUGH = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.GELU,
    nn.SiLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Identity,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
)


def _constant_channels(
    layers: list[nn.Module], start: int, dead: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """The constant value each channel takes after the layers following a
    producer: its bias (or 0) through batch norm and activations."""
    value = bias.detach().clone() if bias is not None else torch.zeros(dead.numel(), dtype=dtype, device=dead.device)
    for layer in layers[start:]:
        if isinstance(layer, nn.BatchNorm2d | nn.BatchNorm1d):
            if layer.running_mean is not None:
                value = (value - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps)
            else:  # batch statistics, in eval mode too: a constant channel normalises to 0
                value = torch.zeros_like(value)
            if layer.affine:
                value = value * layer.weight + layer.bias
        elif isinstance(layer, _PASS_THROUGH):
            if isinstance(layer, nn.Dropout | nn.MaxPool2d | nn.AvgPool2d | nn.AdaptiveAvgPool2d | nn.Identity):
                continue  # a constant map stays the same constant (eval mode)
            value = layer(value)
        else:
            break
    return value


_CHAIN_LAYERS = _PASS_THROUGH + (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.Flatten)


def _is_chain(model: nn.Module) -> bool:
    """Whether the hand-written path handles ``model``: a Sequential of chain layers and Residual blocks."""
    if not isinstance(model, nn.Sequential):
        return False
    return all(
        isinstance(m, _CHAIN_LAYERS) or (isinstance(m, Residual) and _is_chain(m.body) and _is_chain_or_identity(m))
        for m in model
    )


def _is_chain_or_identity(block: Residual) -> bool:
    return (
        isinstance(block.shortcut, nn.Identity)
        or isinstance(block.shortcut, _CHAIN_LAYERS)
        or _is_chain(block.shortcut)
    )


def compact(
    model: nn.Module,
    example_inputs: Any,
    *,
    rtol: float = 1e-4,
    unwrapped_parameters: Sequence[tuple[nn.Parameter, int]] = (),
) -> nn.Module:
    """A smaller copy of ``model`` without its zero channels; ``model`` is not modified.

    Args:
        model: any model Torch-Pruning can trace, or an ``nn.Sequential`` chain (see
            the module docstring for the two routes).
        example_inputs: inputs for one forward pass (a tensor, a tuple of positional
            inputs or a dict of keyword inputs); the result is checked on them.
        rtol: the largest relative output difference accepted (each output tensor's
            max abs difference over its max abs value, eval mode).
        unwrapped_parameters: as in :func:`wgsef.coupled_terms`.

    Returns:
        A plain ``nn.Module`` in eval mode, whose outputs equal ``model``'s in eval
        mode. Raises ``RuntimeError`` if they do not, never returning a wrong model.
    """
    from .coupled import _floating_outputs, _outputs_close, _params_on_copy, _run, compact_coupled

    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    was_training = model.training
    if _is_chain(model) and not unwrapped_parameters:
        x = example_inputs if isinstance(example_inputs, torch.Tensor) else None
        if x is None:
            raise TypeError("example_inputs: an nn.Sequential chain takes one input tensor")
        small = _compact_chain(model, x)
    else:
        small = copy.deepcopy(model)
        compact_coupled(small, example_inputs, _params_on_copy(unwrapped_parameters, model, small))
    model.eval()
    small.eval()
    try:
        with torch.no_grad():
            reference, got = _run(model, example_inputs), _run(small, example_inputs)
    finally:
        model.train(was_training)
    if not _floating_outputs(reference):
        raise ValueError("example_inputs: the model's output holds no floating-point tensor to compare")
    ok, worst = _outputs_close(reference, got, rtol)
    if not ok:
        raise RuntimeError(
            f"compact: the compacted {type(model).__name__} differs from the original by {worst:.3g} "
            f"(relative, > rtol={rtol}); no model returned"
        )
    return small


@torch.no_grad()
def _compact_chain(model: nn.Sequential, example_input: torch.Tensor) -> nn.Sequential:
    """The hand-written path: a copy of the chain without its all-zero conv filters
    and linear rows, constant channels folded into the next layer's bias."""
    was_training = model.training
    model.eval()
    layers = [copy.deepcopy(m) for m in model]
    # the activation entering each layer: its shape for Flatten, itself for blocks
    shapes, x = [], example_input
    for j, layer in enumerate(model):
        shapes.append(tuple(x.shape[1:]))
        if isinstance(layer, Residual):
            layers[j] = Residual(_compact_chain(layer.body, x), copy.deepcopy(layer.shortcut))
        x = layer(x)
    model.train(was_training)

    producers = [i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d | nn.Linear)]
    for pos, i in enumerate(producers[:-1]):  # the last layer's outputs are the model's
        layer, nxt_index = layers[i], producers[pos + 1]
        nxt = layers[nxt_index]
        dead = layer.weight.reshape(layer.weight.shape[0], -1).abs().sum(1) == 0
        if (isinstance(layer, nn.Conv2d) and layer.groups != 1) or (isinstance(nxt, nn.Conv2d) and nxt.groups != 1):
            continue
        between = layers[i + 1 : nxt_index]
        if any(not isinstance(m, _PASS_THROUGH + (nn.BatchNorm2d, nn.BatchNorm1d, nn.Flatten)) for m in between):
            continue
        const = _constant_channels(layers, i + 1, dead, layer.bias, layer.weight.dtype)
        flatten_at = next((j for j in range(i + 1, nxt_index) if isinstance(layers[j], nn.Flatten)), None)
        padded_conv = isinstance(nxt, nn.Conv2d) and any(p != 0 for p in _pair(nxt.padding))
        if padded_conv or any(_averages_padding(m) for m in between):
            dead &= const == 0  # zero padding reaches a constant only in part: only a zero one folds away
        if not dead.any() or dead.all():
            continue
        keep = (~dead).nonzero().flatten()
        # fold the constants of removed channels into the next layer's bias
        if isinstance(nxt, nn.Linear):
            per_channel = 1 if flatten_at is None else int(torch.tensor(shapes[flatten_at][1:]).prod())
            w = nxt.weight.view(nxt.out_features, -1, per_channel)
            shift = (w[:, dead, :] * const[dead].view(1, -1, 1)).sum((1, 2))
            new_w = w[:, keep, :].reshape(nxt.out_features, -1)
            replacement = nn.Linear(new_w.shape[1], nxt.out_features, bias=True, **_factory(nxt))
            replacement.weight.copy_(new_w)
        else:
            shift = (nxt.weight[:, dead] * const[dead].view(1, -1, 1, 1)).sum((1, 2, 3))
            replacement = nn.Conv2d(
                int(keep.numel()),
                nxt.out_channels,
                nxt.kernel_size,
                nxt.stride,
                nxt.padding,
                nxt.dilation,
                bias=True,
                padding_mode=nxt.padding_mode,
                **_factory(nxt),
            )
            replacement.weight.copy_(nxt.weight[:, keep])
        replacement.bias.copy_(shift + (nxt.bias if nxt.bias is not None else 0))
        layers[nxt_index] = replacement
        # shrink the producer and the batch norms in between
        if isinstance(layer, nn.Linear):
            shrunk = nn.Linear(layer.in_features, int(keep.numel()), bias=layer.bias is not None, **_factory(layer))
        else:
            shrunk = nn.Conv2d(
                layer.in_channels,
                int(keep.numel()),
                layer.kernel_size,
                layer.stride,
                layer.padding,
                layer.dilation,
                bias=layer.bias is not None,
                padding_mode=layer.padding_mode,
                **_factory(layer),
            )
        shrunk.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            shrunk.bias.copy_(layer.bias[keep])
        layers[i] = shrunk
        for j in range(i + 1, nxt_index):
            bn = layers[j]
            if isinstance(bn, nn.BatchNorm2d | nn.BatchNorm1d):
                small = type(bn)(
                    int(keep.numel()), bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **_factory(layer)
                )
                if bn.affine:
                    small.weight.copy_(bn.weight[keep])
                    small.bias.copy_(bn.bias[keep])
                if bn.running_mean is not None:
                    small.running_mean.copy_(bn.running_mean[keep])
                    small.running_var.copy_(bn.running_var[keep])
                    small.num_batches_tracked.copy_(bn.num_batches_tracked)
                layers[j] = small
    return nn.Sequential(*layers).eval()


def _pair(v) -> tuple:
    return v if isinstance(v, tuple) else (v, v)


def _averages_padding(layer: nn.Module) -> bool:
    """An average pooling that counts padded zeros (or partial ceil-mode windows):
    a constant map does not stay constant at its borders."""
    return isinstance(layer, nn.AvgPool2d) and (
        (layer.count_include_pad and any(p != 0 for p in _pair(layer.padding))) or layer.ceil_mode
    )


def _factory(module: nn.Module) -> dict:
    """The dtype and device of a conv or linear layer, for a compacted layer that replaces it or follows it."""
    return {"dtype": module.weight.dtype, "device": module.weight.device}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (a tensor, a
    tuple of positional inputs or a dict of keyword inputs), eval mode, counted by
    ``torch.utils.flop_counter`` (flops / 2). Grad mode stays on: under ``no_grad``
    ``nn.MultiheadAttention`` takes a fused op that the counter does not see."""
    from torch.utils.flop_counter import FlopCounterMode

    from .coupled import _run

    # the counter has a formula for the CUDA flash-attention op only
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            _run(model, example_inputs)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
