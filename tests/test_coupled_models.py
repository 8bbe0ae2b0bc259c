"""Coupled groups on real architectures: torchvision and Hugging Face models built
from their constructors (no downloads) are trained with ProxSGD over coupled
groups, frozen to exactly k groups per term and compacted with equal outputs."""

import copy
import io
import sys

import pytest
import torch
from torch import nn

import wgsef

tp = pytest.importorskip("torch_pruning")


class SmallResNet(nn.Module):
    """stem -> residual block (two convs with batch norm, identity shortcut) -> head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(y)) + x)
        return self.fc(x.mean((2, 3)))


def randomize_batch_norms(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def test_the_groups_of_a_residual_block():
    model = SmallResNet()
    found = wgsef.coupled_terms(model, torch.randn(2, 3, 8, 8))
    members = {m.name: (m.dim, m.coupling.tolist()) for m in found.members}
    names = dict(zip([t.name for t in found.terms], found.term_sizes))
    # the residual stream: stem, bn0, conv2, bn2 and the head's input, one term of 8
    # channels; conv1 with bn1 and conv2's input channels, one term of 6
    assert names == {"conv1": 6, "stem": 8} or names == {"stem": 8, "conv1": 6}
    stream = {"stem.weight", "stem.bias", "bn0.weight", "bn0.bias", "conv2.weight", "bn2.weight", "bn2.bias"}
    inner = {"conv1.weight", "bn1.weight", "bn1.bias"}
    assert set(members) == stream | inner | {"fc.weight"}
    offset = {n: found.term_sizes[: [t.name for t in found.terms].index(n)] for n in names}
    base = {n: sum(v) for n, v in offset.items()}
    for name in stream:
        assert members[name] == (0, [base["stem"] + c for c in range(8)])
    for name in inner:
        assert members[name] == (0, [base["conv1"] + c for c in range(6)])
    # conv2 has a group of its own (the stream), so its input channels are not members;
    # the head has none, so its input columns join the stream
    assert members["fc.weight"] == (1, [base["stem"] + c for c in range(8)])
    assert found.skipped == [("fc", "its channels are the model's output")]


def test_zero_invariance_and_compact_on_a_residual_block():
    torch.manual_seed(0)
    model = SmallResNet()
    randomize_batch_norms(model)
    x = torch.randn(3, 3, 8, 8)
    found = wgsef.coupled_terms(model, x)
    with torch.no_grad():  # zero channel 2 of the stream and channels 0, 5 of the block
        stream = next(t for t in found.terms if t.name == "stem")
        begin = 0 if found.terms[0] is stream else found.terms[0].size
        inner_begin = found.terms[0].size if found.terms[0] is stream else 0
        dead = {begin + 2, inner_begin, inner_begin + 5}
        for m in found.members:
            for slice_index, c in enumerate(m.coupling.tolist()):
                if c in dead:
                    m.param.select(m.dim, slice_index).zero_()
    state = copy.deepcopy(model.state_dict())
    model.train()
    small = wgsef.compact(model, x)
    assert model.training  # the user's model keeps its mode and its values
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert (small.conv1.out_channels, small.stem.out_channels, small.fc.in_features) == (4, 7, 7)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-6)
    # a plain module: torch.save / torch.load and torch.export take it
    buffer = io.BytesIO()
    torch.save(small, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    exported = torch.export.export(loaded, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), small(x))


def test_compact_raises_instead_of_returning_a_wrong_model(monkeypatch):
    model = SmallResNet()
    x = torch.randn(2, 3, 8, 8)
    # pretend every coupled group is zero: removing them would change the function
    monkeypatch.setattr(wgsef.CoupledTerms, "group_norms", lambda self: torch.zeros(sum(self.term_sizes)))
    with pytest.raises(RuntimeError, match="differs from the original"):
        wgsef.compact(model, x)


def test_undeclared_parameters_leave_their_group_unregularized():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
            self.head = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x) * self.scale))

    model = Scaled()
    x = torch.randn(1, 3, 4, 4)
    groups = wgsef.coupled_param_groups(model, x)
    assert groups[0]["params"] == []
    assert any("cannot place" in why for _, why in groups[1]["skipped"])
    declared = wgsef.coupled_param_groups(model, x, unwrapped_parameters=[(model.scale, 1)])
    assert "scale" in declared[0]["names"] and ("dim", 1) in declared[0]["groups"]


def test_errors():
    with pytest.raises(TypeError, match=r"model: expected an nn\.Module"):
        wgsef.coupled_terms("resnet", torch.randn(1))
    with pytest.raises(ValueError, match=r"weights: expected 'size' or None"):
        wgsef.coupled_param_groups(SmallResNet(), torch.randn(1, 3, 8, 8), weights="sqrt")

    class NoTensorOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return int(self.fc(x).argmax())

    with pytest.raises(ValueError, match="example_inputs"):
        wgsef.coupled_terms(NoTensorOutput(), torch.randn(1, 2))


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r"wgsef\[prune\]"):
        wgsef.coupled_terms(SmallResNet(), torch.randn(1, 3, 8, 8))


def test_size_weights_are_group_sizes_over_their_term_mean():
    model = SmallResNet()
    x = torch.randn(1, 3, 8, 8)
    groups = wgsef.coupled_param_groups(model, x)
    found = wgsef.coupled_terms(model, x)
    sizes, begin = found.group_sizes(), 0
    for size in found.term_sizes:
        part = sizes[begin : begin + size]
        torch.testing.assert_close(groups[0]["weights"][begin : begin + size], part / part.mean())
        begin += size
    # one stream channel: stem filter 27 + bias 1 + bn0 2 + conv2 filter 54 + bn2 2 + fc column 4
    assert sizes.max() == 90 and sizes.min() == 8 * 9 + 2 + 0  # conv1 filter 72, bn1 2 (conv1 has no bias)


# --- real architectures ------------------------------------------------------------


def torchvision_model(name):
    tv = pytest.importorskip("torchvision")
    kwargs = {"image_size": 32} if name.startswith("vit") else {}
    torch.manual_seed(0)
    model = getattr(tv.models, name)(num_classes=10, **kwargs)
    randomize_batch_norms(model)
    if name.startswith("vit"):  # a zero-initialized head gives zero outputs: compact's check would be empty
        nn.init.normal_(model.heads.head.weight, std=0.02)
    x = torch.randn(2, 3, 32, 32)

    def loss(m):
        return nn.functional.cross_entropy(m(x), torch.tensor([1, 7]))

    return model, x, loss


def transformers_model(name):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=100)
    if name == "bert":
        config = transformers.BertConfig(**common, num_labels=3, attn_implementation="eager")
        model = transformers.BertForSequenceClassification(config)
        inputs = {"input_ids": torch.randint(0, 100, (2, 8))}
    else:
        config = transformers.LlamaConfig(**common, num_key_value_heads=4, attn_implementation="eager")
        model = transformers.LlamaForCausalLM(config)
        inputs = {"input_ids": torch.randint(0, 100, (2, 8)), "use_cache": False}

    def loss(m):
        return m(**inputs).logits.float().square().mean()

    return model, inputs, loss


def test_grouped_query_attention_raises_instead_of_hanging():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=100,
    )
    model = transformers.LlamaForCausalLM(config)
    inputs = {"input_ids": torch.randint(0, 100, (2, 8)), "use_cache": False}
    with pytest.raises(NotImplementedError, match=r"model.layers.0.self_attn uses grouped-query attention \(2"):
        wgsef.coupled_param_groups(model, inputs)
    with pytest.raises(NotImplementedError, match="grouped-query"):
        wgsef.compact(model, inputs)


MODELS = {
    "resnet18": torchvision_model,
    "resnet50": torchvision_model,
    "mobilenet_v2": torchvision_model,
    "vgg11_bn": torchvision_model,
    "vit_b_16": torchvision_model,
    "convnext_tiny": torchvision_model,
    "bert": transformers_model,
    "llama": transformers_model,
}


@pytest.mark.parametrize("name", list(MODELS))
def test_train_freeze_and_compact_a_real_model(name):
    model, inputs, loss = MODELS[name](name)
    groups = wgsef.coupled_param_groups(model, inputs, k=0.5, lam=1e-3)
    assert groups[0]["params"], groups[1]["skipped"]
    opt = wgsef.ProxSGD(groups, lr=1e-3, momentum=0.9)
    # eval mode: batch norm over 2 samples at 1x1 maps (the deepest layers at 32x32
    # input) has degenerate batch statistics whose gradients overflow
    model.eval()
    for _ in range(2):
        opt.zero_grad()
        loss(model).backward()
        opt.step()
    opt.freeze_support()
    opt.zero_grad()
    loss(model).backward()
    opt.step()
    report = wgsef.sparsity_report(opt)
    terms = [r for r in report if r.shape == ()]
    assert len(terms) == len(groups[0]["term_sizes"])
    assert all(r.groups_kept == r.k == max(1, round(0.5 * r.groups_total)) for r in terms)

    small = wgsef.compact(model, inputs)  # raises if outputs differ by more than 1e-4
    # every member tensor keeps exactly the slices of its kept coupled groups
    found = wgsef.coupled_terms(model, inputs)
    kept = found.group_norms() > 0
    params = dict(small.named_parameters())
    for m in found.members:
        assert params[m.name].shape[m.dim] == int(kept[m.coupling.cpu()].sum()), m.name
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in small.parameters())
    assert after < before
