"""AdamW + WGSEF over the attention heads and MLP hidden units of a small transformer.

The 8x8 digits of scikit-learn become sequences of 8 rows (tokens of 8 pixels). A
two-layer transformer encoder (``nn.TransformerEncoderLayer``, 4 heads, MLP width 64)
classifies them. ``wgsef.coupled_param_groups`` makes one WGSEF term per layer's
heads (a head's q, k and v rows and its output-projection columns) and one per
layer's MLP hidden units (a row of the first linear layer with its bias and the
matching column of the second); ``wgsef.ProxOptimizer`` applies the prox after
every AdamW step. ``freeze_support()`` then keeps exactly ``k`` heads and hidden
units per layer for the last epochs, and ``wgsef.compact`` removes the others.

    python examples/transformer_heads.py [--epochs 40] [--keep 0.5] [--lam 0.05] [--seed 0]

Needs scikit-learn and torch-pruning (``pip install "wgsef[demo]"``).
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn

import wgsef


class RowTransformer(nn.Module):
    def __init__(self, width: int = 32, heads: int = 4, layers: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.position = nn.Parameter(torch.zeros(1, 8, width))
        layer = nn.TransformerEncoderLayer(width, heads, hidden, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, 10)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(rows) + self.position).mean(1))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return 100.0 * float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--keep", type=float, default=0.5, help="kept fraction of heads and hidden units per layer")
    parser.add_argument("--lam", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).view(-1, 8, 8) / 16.0
    y = torch.tensor(labels)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(args.seed))
    train, test = order[: int(0.8 * len(y))], order[int(0.8 * len(y)) :]

    torch.manual_seed(args.seed)
    model = RowTransformer()
    groups = wgsef.coupled_param_groups(model, x[:2], k=args.keep, lam=args.lam)
    opt = wgsef.ProxOptimizer(torch.optim.AdamW(groups, lr=3e-3, weight_decay=0.01))
    heal = args.epochs // 4
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        if epoch == args.epochs - heal:
            opt.freeze_support()  # exactly k heads and hidden units per layer from here on
        model.train()
        for batch in train[torch.randperm(len(train), generator=g)].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()

    print(f"test accuracy {accuracy(model, x[test], y[test]):.1f}% after {args.epochs} epochs (AdamW + WGSEF)")
    print(wgsef.sparsity_report(opt))
    small = wgsef.compact(model, x[test])
    attention = [layer.self_attn for layer in small.encoder.layers]
    print(
        f"compacted: {sum(p.numel() for p in model.parameters()):,} -> {sum(p.numel() for p in small.parameters()):,} "
        f"parameters, heads per layer {[a.num_heads for a in attention]}, "
        f"MLP widths {[layer.linear1.out_features for layer in small.encoder.layers]}, "
        f"test accuracy {accuracy(small, x[test], y[test]):.1f}%"
    )


if __name__ == "__main__":
    main()
