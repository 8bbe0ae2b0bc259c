"""PrunedMultiheadAttention: the kept heads of an nn.MultiheadAttention whose other
heads are zero give nn.MultiheadAttention's outputs and attention weights."""

import pytest
import torch
from torch import nn

from wgsef.attention import PrunedMultiheadAttention


def attention_with_zero_heads(batch_first, bias=True, zero=(1, 3)):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, bias=bias, batch_first=batch_first).double().eval()
    e, d = 16, 4
    with torch.no_grad():
        if bias:  # non-zero biases, so a zero head is zero only through its own slices
            mha.in_proj_bias.normal_()
            mha.out_proj.bias.normal_()
        for h in zero:
            rows = torch.cat([torch.arange(h * d, (h + 1) * d) + part * e for part in range(3)])
            mha.in_proj_weight[rows] = 0
            if bias:
                mha.in_proj_bias[rows] = 0
            mha.out_proj.weight[:, h * d : (h + 1) * d] = 0
    kept = torch.tensor([h for h in range(4) if h not in zero])
    return mha, PrunedMultiheadAttention.from_attention(mha, kept).eval()


def masks(n, length, source, heads):
    g = torch.Generator().manual_seed(1)
    causal = torch.ones(length, source, dtype=torch.bool).triu(1)
    padding = torch.zeros(n, source, dtype=torch.bool)
    padding[0, -2:] = True
    per_head = torch.randn(n * heads, length, source, generator=g, dtype=torch.float64)
    return [
        {},
        {"attn_mask": causal},
        {"key_padding_mask": padding},
        {
            "attn_mask": per_head,
            "key_padding_mask": torch.zeros(n, source, dtype=torch.float64).masked_fill(padding, -5.0),
        },
        {"attn_mask": torch.randn(length, source, generator=g, dtype=torch.float64)},
    ]


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_outputs_and_weights_equal_the_original(batch_first, bias):
    mha, pruned = attention_with_zero_heads(batch_first, bias)
    assert pruned.num_heads == 2 and pruned.in_proj_weight.shape == (24, 16) and pruned.out_proj.in_features == 8
    n, length, source = 3, 5, 6
    q = torch.randn(n, length, 16, dtype=torch.float64)
    kv = torch.randn(n, source, 16, dtype=torch.float64)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    for kwargs in masks(n, length, source, 4):
        for need_weights, average in ((False, True), (True, True), (True, False)):
            args = dict(kwargs, need_weights=need_weights, average_attn_weights=average)
            want_out, want_w = mha(q, kv, kv, **args)
            got_out, got_w = pruned(q, kv, kv, **args)
            torch.testing.assert_close(got_out, want_out)
            if need_weights:
                torch.testing.assert_close(got_w, want_w)
            else:
                assert got_w is None


def test_unbatched_input_and_export():
    mha, pruned = attention_with_zero_heads(batch_first=True, zero=(0,))
    x = torch.randn(5, 16, dtype=torch.float64)
    for need_weights in (False, True):
        want, want_w = mha(x, x, x, need_weights=need_weights)
        got, got_w = pruned(x, x, x, need_weights=need_weights)
        torch.testing.assert_close(got, want)
        if need_weights:
            torch.testing.assert_close(got_w, want_w)

    class Block(nn.Module):
        def __init__(self, attention):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            return self.attention(x, x, x, need_weights=False)[0]

    x = torch.randn(2, 5, 16, dtype=torch.float64)
    exported = torch.export.export(Block(pruned), (x,))
    torch.testing.assert_close(exported.module()(x), mha(x, x, x, need_weights=False)[0])


def test_bad_arguments():
    mha = nn.MultiheadAttention(16, 4)
    with pytest.raises(ValueError, match="kept_heads"):
        PrunedMultiheadAttention.from_attention(mha, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="kept_heads"):
        PrunedMultiheadAttention.from_attention(mha, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="bias_k"):
        PrunedMultiheadAttention.from_attention(nn.MultiheadAttention(16, 4, add_bias_kv=True), torch.tensor([0]))
    pruned = PrunedMultiheadAttention.from_attention(mha, torch.tensor([2]))
    x = torch.randn(5, 2, 16)
    with pytest.raises(RuntimeError, match="is_causal"):
        pruned(x, x, x, is_causal=True)


def test_transformer_encoder_layer_takes_the_pruned_module_off_its_fast_path():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True).double().eval()
    mha, pruned = attention_with_zero_heads(batch_first=True)
    layer.self_attn = mha
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    with torch.no_grad():  # eval + no_grad: the fused path for the original
        want = layer(x)
        layer.self_attn = pruned
        got = layer(x)
    torch.testing.assert_close(got, want)
