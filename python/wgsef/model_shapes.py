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
