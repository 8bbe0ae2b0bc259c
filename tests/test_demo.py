"""The end-to-end demo in miniature, and its group-lasso baseline against a reference."""

import importlib.util
import json

import pytest
import torch

from wgsef.demo import ResidualCNN, group_lasso_step, restore_missing_groups
from wgsef.demo import main as demo_main

pytest.importorskip("torch_pruning")

TINY = ["--dataset", "synthetic", "--width", "4", "--epochs", "4", "--keep", "0.5", "--quiet"]


def test_tiny_demo_keeps_k_groups_and_compacts_exactly(tmp_path):
    res = demo_main(TINY + ["--seeds", "1", "2", "--plot", "--out", str(tmp_path)])
    s = res["structured"]
    first = s["seeds"][0]
    k = [t["k"] for t in first["wgsef"]["terms"]]
    assert k == [t["groups_total"] // 2 for t in first["wgsef"]["terms"]]
    for run in s["seeds"]:
        assert [t["groups_kept"] for t in run["wgsef"]["terms"]] == k
        assert run["group_lasso"]["groups_kept"] == run["magnitude"]["groups_kept"] == k
    c = s["compacted"]
    assert c["max_abs_output_difference"] < 1e-4
    assert c["test_accuracy"] == first["wgsef"]["test_accuracy"]
    # Torch-Pruning's pruned model has the compacted WGSEF model's channel counts
    assert first["torch_pruning"]["params"] == c["params"]["compacted"] < c["params"]["dense"]
    for method, summary in s["summary"].items():
        accs = [run[method]["test_accuracy"] for run in s["seeds"]]
        assert summary["per_seed"] == accs
        assert summary["mean"] == pytest.approx(sum(accs) / 2)
        assert summary["std"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    assert res["nm"]["SR-STE"]["valid_nm"] and res["nm"]["MDGF-exponential"]["valid_nm"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["structured"]["seeds"][0]["wgsef"]["terms"] == first["wgsef"]["terms"]
    assert [h["epoch"] for h in first["wgsef"]["history"]] == [0, 1, 2, 3, 4]
    assert first["wgsef"]["history"][-1]["groups_kept"] == k
    plot = tmp_path / "history.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert not plot.exists()  # --plot without matplotlib writes nothing and says so
    else:
        assert plot.read_bytes()[:4] == b"\x89PNG"


def test_group_lasso_heals_exactly_k_groups_for_every_seed(tmp_path):
    # a lasso strong enough to zero every group before the freeze: the missing
    # groups are restored, so the healed model still has k per term
    args = TINY[:5] + ["2", "--quiet", "--only", "structured", "--lasso-lam", "1e4"]
    res = demo_main(args + ["--seeds", "1", "2", "3", "4", "5", "--out", str(tmp_path)])
    for run in res["structured"]["seeds"]:
        k = [t["k"] for t in run["wgsef"]["terms"]]
        assert run["group_lasso"]["groups_kept"] == k
        assert run["group_lasso"]["groups_restored_at_freeze"] == sum(k)


def test_fixed_seed_gives_the_same_numbers(tmp_path):
    args = TINY[:5] + ["2", "--only", "structured", "--quiet", "--seeds", "3"]
    a = demo_main(args + ["--out", str(tmp_path / "a")])["structured"]["seeds"][0]
    b = demo_main(args + ["--out", str(tmp_path / "b")])["structured"]["seeds"][0]
    for method in ("dense", "wgsef", "group_lasso", "torch_pruning", "magnitude"):
        assert a[method]["test_accuracy"] == b[method]["test_accuracy"]
    assert a["wgsef"]["history"] == b["wgsef"]["history"]


def coupled_slices(found):
    """Per coupled group, every member slice as a float64 vector (the reference's view)."""
    slices = [[] for _ in range(sum(found.term_sizes))]
    for m in found.members:
        for index, group in enumerate(m.coupling.tolist()):
            slices[group].append(m.param.detach().select(m.dim, index).double().flatten())
    return [torch.cat(s) for s in slices]


def test_group_lasso_step_is_block_soft_thresholding_of_coupled_groups():
    import wgsef

    torch.manual_seed(0)
    model = ResidualCNN(1)
    found = wgsef.coupled_terms(model, torch.randn(2, 1, 40))
    before = coupled_slices(found)
    norms = torch.stack([s.norm() for s in before])
    strength = float(norms.median())  # about half the groups go to zero
    group_lasso_step(found, strength)
    after = coupled_slices(found)
    for x, y, n in zip(before, after, norms):
        torch.testing.assert_close(y, x * max(0.0, 1 - strength / float(n)), rtol=1e-5, atol=1e-7)
    assert 0 < sum(float(y.norm()) == 0 for y in after) < len(after)


def test_restore_missing_groups_fills_each_term_to_k_and_leaves_the_rest():
    import wgsef

    torch.manual_seed(0)
    model = ResidualCNN(1)
    found = wgsef.coupled_terms(model, torch.randn(2, 1, 40))
    # the first term loses every group, the others all but their first 3
    starts = torch.tensor([0, *found.term_sizes]).cumsum(0)[:-1]
    dead = torch.zeros(sum(found.term_sizes), dtype=torch.bool)
    for t, (start, size) in enumerate(zip(starts.tolist(), found.term_sizes)):
        dead[start + (0 if t == 0 else 3) : start + size] = True
    initial = [m.param.detach().clone() for m in found.members]
    init_slices = coupled_slices(found)
    with torch.no_grad():
        for m in found.members:
            m.param[(slice(None),) * m.dim + (dead[m.coupling],)] = 0
    before = coupled_slices(found)
    budgets = [s // 2 for s in found.term_sizes]
    restored = restore_missing_groups(found, budgets, initial)
    after = coupled_slices(found)
    alive_before = [float(x.norm()) > 0 for x in before]
    offset = 0
    for size, k in zip(found.term_sizes, budgets):
        alive = [float(after[offset + g].norm()) > 0 for g in range(size)]
        # the alive groups lead each term, so the restored ones follow them
        assert alive == [g < max(k, sum(alive_before[offset : offset + size])) for g in range(size)]
        offset += size
    assert restored == sum(float(y.norm()) > 0 for y in after) - sum(alive_before)
    for x, y, start, was_alive in zip(before, after, init_slices, alive_before):
        assert torch.equal(y, x if was_alive or float(y.norm()) == 0 else start)


def test_per_tensor_methods_and_pat_keep_the_same_filters_per_conv(tmp_path):
    pytest.importorskip("torchao")
    methods = ["wgsef_filters", "pat_group_lasso", "pat_topk"]
    args = TINY + ["--seeds", "1", "--only", "structured", "--methods", *methods, "--out", str(tmp_path)]
    run = demo_main(args)["structured"]["seeds"][0]
    # width 4: the stem and first block convs have 4 filters, the rest 8; keep 0.5
    want = [2, 2, 2, 4, 4, 4, 4, 4]
    assert [run[m]["groups_kept"] for m in methods] == [want] * 3
