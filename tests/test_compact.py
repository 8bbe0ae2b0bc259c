"""wgsef.compact: zero filters removed from Sequential and Residual models, outputs kept."""

import pytest
import torch
from torch import nn

from wgsef.compaction import Residual, compact, count_macs, count_params


def lenet(classes: int = 10) -> nn.Sequential:
    """A LeNet-like CNN for 8x8 inputs; unpadded inner convs let compaction fold
    the constant output of a pruned filter into the next layer exactly."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, classes),
    )


def test_count_macs_matches_the_layer_formulas():
    model = lenet()
    # conv: output positions x out channels x (in channels x kernel); linear: in x out
    expected = 8 * 8 * 16 * (1 * 9) + 6 * 6 * 32 * (16 * 9) + 1 * 1 * 64 * (32 * 9) + 64 * 128 + 128 * 10
    assert count_macs(model, torch.rand(1, 1, 8, 8)) == expected
    assert count_macs(model, torch.rand(3, 1, 8, 8)) == 3 * expected
    assert model.training  # restored
    attention = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(2, 5, 16)
    # q, k, v and out projections, then q @ k^T and weights @ v over 4 heads of 4
    projections = 2 * 5 * 4 * 16 * 16
    scores = 2 * 4 * (5 * 5 * 4) * 2
    with torch.no_grad():  # the fused no-grad path is counted too
        assert count_macs(attention, (x, x, x)) == projections + scores


def test_compact_removes_zero_filters_and_keeps_outputs():
    torch.manual_seed(0)
    model = lenet()
    x = torch.rand(32, 1, 8, 8)
    model.train()
    for _ in range(3):  # non-trivial batch-norm statistics
        model(x)
    with torch.no_grad():
        model[0].weight[[1, 5, 6]] = 0  # conv1 filters -> constants through BN + ReLU
        model[3].weight[::3] = 0  # conv2
        model[7].weight[10:40] = 0  # conv3 -> Flatten -> Linear
        model[11].weight[[0, 7]] = 0  # fc1 rows -> constants ReLU(bias)
    model.eval()
    small = compact(model, x[:2])
    assert small[0].out_channels == 13 and small[1].num_features == 13
    assert small[3].in_channels == 13 and small[3].out_channels == 21
    assert small[7].in_channels == 21 and small[7].out_channels == 34
    assert small[11].in_features == 34 and small[11].out_features == 126
    assert small[13].in_features == 126
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
    assert count_params(small) < count_params(model)
    assert count_macs(small, x) < count_macs(model, x)


def test_compact_keeps_padded_channels_with_nonzero_constants():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.5  # constant 0.5 map: cannot fold into a padded conv exactly
        model[0].weight[2] = 0
        model[0].bias[2] = -1.0  # ReLU makes it exactly 0: removable
    small = compact(model, torch.rand(1, 1, 6, 6))
    assert small[0].out_channels == 3
    x = torch.rand(5, 1, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x))
    with pytest.raises(TypeError, match=r"model: expected an nn\.Module"):
        compact("model", torch.rand(1, 2))


def test_compact_inside_residual_blocks():
    torch.manual_seed(0)

    def block(c):
        return Residual(
            nn.Sequential(
                nn.Conv2d(c, 12, 3, padding=1, bias=False),
                nn.BatchNorm2d(12),
                nn.ReLU(),
                nn.Conv2d(12, c, 1, bias=False),
                nn.BatchNorm2d(c),
            )
        )

    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        block(8),
        nn.ReLU(),
        block(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )
    x = torch.rand(16, 1, 6, 6)
    model.train()
    model(x)
    with torch.no_grad():
        model[3].body[0].weight[[0, 4, 5]] = 0  # inner channels: removable (next conv is 1x1, unpadded)
        model[5].body[0].weight[[2]] = 0
    model.eval()
    small = compact(model, x[:2])
    assert small[3].body[0].out_channels == 9 and small[3].body[3].in_channels == 9
    assert small[5].body[0].out_channels == 11
    assert small[3].body[3].out_channels == 8  # coupled to the shortcut: kept
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def _trained_bn_model(*layers, x):
    model = nn.Sequential(*layers)
    model.train()
    for _ in range(3):
        model(x)
    return model.eval()


def test_compact_keeps_constant_channels_that_average_pooling_pads():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 6, 6)
    model = _trained_bn_model(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, 1, padding=1), nn.Conv2d(4, 2, 1), x=x
    )
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.7  # constant 0.7 map, but not at the borders after the padded average
        model[0].weight[2] = 0
        model[0].bias[2] = -1.0  # ReLU makes it exactly 0: removable
    small = compact(model, x[:2])
    assert small[0].out_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-6, atol=1e-6)


def test_compact_keeps_the_model_dtype():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    model = lenet().double()
    with torch.no_grad():
        model[0].weight[[1, 5]] = 0
    model.eval()
    small = compact(model, x[:2])
    assert all(p.dtype == torch.float64 for p in small.parameters())
    assert all(b.dtype in (torch.float64, torch.int64) for b in small.buffers())
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
def test_compact_with_batch_norm_on_batch_statistics(affine):
    torch.manual_seed(0)
    x = torch.rand(8, 1, 6, 6)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4, affine=affine, track_running_stats=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 16, 3),
    ).eval()
    with torch.no_grad():
        if affine:
            model[1].bias.copy_(torch.tensor([0.1, 0.5, -0.2, 0.3]))
        model[0].weight[1] = 0  # normalised by batch statistics: the constant beta
    small = compact(model, x[:2])
    assert small[0].out_channels == 3 and small[1].num_features == 3
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)
