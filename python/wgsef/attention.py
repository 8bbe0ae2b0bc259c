"""``nn.MultiheadAttention`` with heads removed, for :func:`wgsef.compact`.

``nn.MultiheadAttention`` ties the inner width of its q/k/v projections to
``embed_dim``, so it cannot hold fewer heads of the same size.
:class:`PrunedMultiheadAttention` keeps ``num_heads`` of the original
``original_heads`` heads: its projections map ``embed_dim`` to ``num_heads *
head_dim`` and back. It takes the same call as ``nn.MultiheadAttention`` and, when
the removed heads were all zero (their q, k and v rows and their output columns),
returns the same outputs, attention weights included: a zero head attends with
``softmax(mask)``, which is computed without its weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class PrunedMultiheadAttention(nn.Module):
    """The kept heads of an ``nn.MultiheadAttention``; build it with :meth:`from_attention`."""

    def __init__(
        self,
        embed_dim: int,
        head_dim: int,
        kept_heads: Tensor,
        original_heads: int,
        *,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.embed_dim, self.head_dim, self.original_heads = embed_dim, head_dim, original_heads
        self.num_heads = int(kept_heads.numel())
        self.batch_first, self.dropout = batch_first, dropout
        # False keeps callers such as nn.TransformerEncoderLayer off their fused fast
        # path, which assumes embed_dim == num_heads * head_dim, and on this forward
        self._qkv_same_embed_dim = False
        self.register_buffer("kept_heads", kept_heads.to(torch.int64).clone(), persistent=True)
        inner = self.num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **factory))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * inner, **factory)) if bias else None
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **factory)

    @classmethod
    @torch.no_grad()
    def from_attention(cls, attention: nn.MultiheadAttention, kept_heads: Tensor) -> PrunedMultiheadAttention:
        """The heads ``kept_heads`` (indices into ``attention``'s heads) of ``attention``,
        which must pack q, k and v in one ``in_proj_weight`` and have no ``bias_k``,
        ``bias_v`` or ``add_zero_attn``."""
        if not attention._qkv_same_embed_dim or attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError("attention: only nn.MultiheadAttention with packed q/k/v and no bias_k/zero_attn")
        e, d, h = attention.embed_dim, attention.head_dim, attention.num_heads
        kept = torch.as_tensor(kept_heads, dtype=torch.int64).cpu()
        if kept.numel() == 0 or kept.unique().numel() != kept.numel() or bool((kept < 0).any() | (kept >= h).any()):
            raise ValueError(f"kept_heads: expected distinct head indices in [0, {h}), got {kept.tolist()}")
        w = attention.in_proj_weight
        pruned = cls(
            e,
            d,
            kept,
            h,
            bias=attention.in_proj_bias is not None,
            batch_first=attention.batch_first,
            dropout=attention.dropout,
            device=w.device,
            dtype=w.dtype,
        )
        within = (kept.view(-1, 1) * d + torch.arange(d)).flatten()  # the kept rows of q (or k, or v)
        rows = torch.cat([within + part * e for part in range(3)]).to(w.device)
        pruned.in_proj_weight.copy_(w[rows])
        if attention.in_proj_bias is not None:
            pruned.in_proj_bias.copy_(attention.in_proj_bias[rows])
            pruned.out_proj.bias.copy_(attention.out_proj.bias)
        pruned.out_proj.weight.copy_(attention.out_proj.weight[:, within.to(w.device)])
        pruned.train(attention.training)
        return pruned

    def _mask(self, attn_mask: Tensor | None, key_padding_mask: Tensor | None, n: int, q: Tensor) -> Tensor | None:
        """One additive float mask of shape (n, original heads or 1, L, S)."""
        mask = None
        if attn_mask is not None:
            m = (
                torch.zeros_like(attn_mask, dtype=q.dtype).masked_fill(attn_mask, -math.inf)
                if attn_mask.dtype == torch.bool
                else attn_mask.to(q.dtype)
            )
            mask = m.view(n, self.original_heads, *m.shape[-2:]) if m.dim() == 3 else m.view(1, 1, *m.shape)
        if key_padding_mask is not None:
            k = key_padding_mask
            k = torch.zeros_like(k, dtype=q.dtype).masked_fill(k, -math.inf) if k.dtype == torch.bool else k.to(q.dtype)
            k = k.view(n, 1, 1, -1)
            mask = k if mask is None else mask + k
        return mask

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """As ``nn.MultiheadAttention.forward``; ``is_causal`` is a hint that needs ``attn_mask``."""
        if is_causal and attn_mask is None:
            raise RuntimeError("is_causal: pass the causal attn_mask as well (as nn.MultiheadAttention requires)")
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        if not self.batch_first or unbatched:  # (L, N, E) -> (N, L, E)
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, _ = query.shape
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)

        def heads(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            return F.linear(x, w, b).view(n, x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(query, w_q, b_q), heads(key, w_k, b_k), heads(value, w_v, b_v)
        mask = self._mask(attn_mask, key_padding_mask, n, q)
        kept_mask = mask if mask is None or mask.shape[1] == 1 else mask[:, self.kept_heads]
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            probs = torch.softmax(scores if kept_mask is None else scores + kept_mask, dim=-1)
            out = F.dropout(probs, dropout, self.training) @ v
            # a removed (zero) head scores 0 everywhere: its weights are softmax(mask)
            removed = torch.zeros(n, self.original_heads, length, k.shape[2], dtype=q.dtype, device=q.device)
            weights = torch.softmax(removed if mask is None else removed + mask, dim=-1)
            weights = weights.index_copy(1, self.kept_heads, probs)
            weights = weights.mean(1) if average_attn_weights else weights
            if unbatched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=kept_mask, dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).reshape(n, length, self.num_heads * self.head_dim))
        if not self.batch_first or unbatched:
            out = out.transpose(0, 1)
        return (out.squeeze(1) if unbatched else out), weights
