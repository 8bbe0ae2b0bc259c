"""Weight shapes of well-known networks, computed from their architectures.

Used by the demonstration and the benchmarks, so that both run on realistic
tensors without downloading any model. Layouts: conv ``[O, I, kh, kw]``,
linear ``[out, in]``.
"""

from __future__ import annotations

LayerShapes = list[tuple[str, tuple[int, ...]]]


def resnet50() -> LayerShapes:
    """The 53 conv weights and the fc weight of torchvision's ResNet-50 (25.5M parameters)."""
    layers: LayerShapes = [("conv1", (64, 3, 7, 7))]
    in_ch = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            name = f"layer{stage}.{b}"
            layers += [
                (f"{name}.conv1", (width, in_ch, 1, 1)),
                (f"{name}.conv2", (width, width, 3, 3)),
                (f"{name}.conv3", (4 * width, width, 1, 1)),
            ]
            if b == 0:
                layers.append((f"{name}.downsample", (4 * width, in_ch, 1, 1)))
            in_ch = 4 * width
    layers.append(("fc", (1000, 2048)))
    return layers


def resnet18() -> LayerShapes:
    """The 20 conv weights and the fc weight of torchvision's ResNet-18 (11.7M parameters)."""
    layers: LayerShapes = [("conv1", (64, 3, 7, 7))]
    in_ch = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            name = f"layer{stage}.{b}"
            layers += [(f"{name}.conv1", (width, in_ch, 3, 3)), (f"{name}.conv2", (width, width, 3, 3))]
            if b == 0 and in_ch != width:
                layers.append((f"{name}.downsample", (width, in_ch, 1, 1)))
            in_ch = width
    layers.append(("fc", (1000, 512)))
    return layers


def vgg16() -> LayerShapes:
    """The 13 conv and 3 linear weights of VGG-16 (138M parameters; fc6 is 4096 x 25088)."""
    layers: LayerShapes = []
    in_ch = 3
    for i, width in enumerate((64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)):
        layers.append((f"features.conv{i}", (width, in_ch, 3, 3)))
        in_ch = width
    layers += [("fc6", (4096, 25088)), ("fc7", (4096, 4096)), ("fc8", (1000, 4096))]
    return layers


def _transformer(layers_count: int, d: int, ff: int, qkv_fused: bool, prefix: str) -> LayerShapes:
    layers: LayerShapes = []
    for i in range(layers_count):
        name = f"{prefix}{i}"
        if qkv_fused:
            layers.append((f"{name}.attn.qkv", (3 * d, d)))
        else:
            layers += [(f"{name}.attn.{p}", (d, d)) for p in ("query", "key", "value")]
        layers += [(f"{name}.attn.out", (d, d)), (f"{name}.mlp.fc1", (ff, d)), (f"{name}.mlp.fc2", (d, ff))]
    return layers


def vit_b16() -> LayerShapes:
    """ViT-B/16: the patch conv, 12 blocks (fused qkv, out, MLP) and the head (86.3M)."""
    return [("patch_embed", (768, 3, 16, 16)), *_transformer(12, 768, 3072, True, "blocks."), ("head", (1000, 768))]


def bert_base() -> LayerShapes:
    """BERT-base encoder matrices: 12 layers of q, k, v, out, intermediate, output,
    and the pooler (85.5M; embeddings not included)."""
    return [*_transformer(12, 768, 3072, False, "encoder.layer."), ("pooler", (768, 768))]


def gpt2_small() -> LayerShapes:
    """GPT-2 small block matrices in [out, in] layout (84.9M; embeddings not included)."""
    return _transformer(12, 768, 3072, True, "h.")


MODELS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "vit_b16": vit_b16,
    "bert_base": bert_base,
    "gpt2_small": gpt2_small,
}
