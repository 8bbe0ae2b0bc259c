"""Physically remove pruned filters: a smaller dense model with the same outputs.

:func:`compact` walks an ``nn.Sequential`` chain of ``Conv2d`` / ``BatchNorm2d`` /
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

import torch
from torch import nn

__all__ = ["Residual", "compact", "count_flops", "count_params"]


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


@torch.no_grad()
def compact(model: nn.Sequential, example_input: torch.Tensor) -> nn.Sequential:
    """A copy of ``model`` without its all-zero conv filters and linear rows.

    Args:
        model: an ``nn.Sequential`` (see the module docstring for what it may hold).
        example_input: one input batch, used to learn the spatial size at ``Flatten``.

    Returns:
        A new ``nn.Sequential`` in eval mode whose outputs equal ``model``'s (in eval
        mode) up to floating-point rounding.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"model: expected an nn.Sequential, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    layers = [copy.deepcopy(m) for m in model]
    # the activation entering each layer: its shape for Flatten, itself for blocks
    shapes, x = [], example_input
    for j, layer in enumerate(model):
        shapes.append(tuple(x.shape[1:]))
        if isinstance(layer, Residual):
            layers[j] = Residual(compact(layer.body, x), copy.deepcopy(layer.shortcut))
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


@torch.no_grad()
def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Multiply-accumulates of the conv and linear layers for one sample."""
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_out = module.weight[0].numel()
            total += per_out * output[0].numel()
        elif isinstance(module, nn.Linear):
            total += module.weight.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    model(example_input[:1])
    model.train(was_training)
    for h in handles:
        h.remove()
    return total
