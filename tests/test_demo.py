"""The end-to-end demo in miniature."""

import importlib.util
import json

import pytest

from wgsef.demo import main as demo_main


@pytest.mark.parametrize("dataset", ["digits", "synthetic"])
def test_tiny_demo_keeps_k_groups_and_compacts_exactly(tmp_path, dataset):
    args = ["--dataset", dataset, "--epochs", "4", "--keep", "0.5", "--quiet", "--plot", "--out", str(tmp_path)]
    res = demo_main(args)
    s = res["structured"]
    for layer in s["wgsef"]["layers"]:
        assert layer["groups_kept"] == layer["k"] == layer["groups_total"] // 2
    assert s["group_lasso"]["groups_kept"] == s["magnitude"]["groups_kept"] == [8, 16, 32, 64]
    assert s["compacted"]["max_abs_output_difference"] < 1e-4
    assert s["compacted"]["test_accuracy"] == s["wgsef"]["test_accuracy"]
    assert s["compacted"]["params"]["compacted"] < s["compacted"]["params"]["dense"]
    assert res["nm"]["SR-STE"]["valid_nm"] and res["nm"]["MDGF-exponential"]["valid_nm"]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["structured"]["wgsef"]["layers"] == s["wgsef"]["layers"]
    assert [h["epoch"] for h in s["wgsef"]["history"]] == [0, 1, 2, 3, 4]
    assert s["wgsef"]["history"][-1]["groups_kept"] == [8, 16, 32, 64]
    plot = tmp_path / "history.png"
    if importlib.util.find_spec("matplotlib") is None:
        assert not plot.exists()  # --plot without matplotlib writes nothing and says so
    else:
        assert plot.read_bytes()[:4] == b"\x89PNG"
    if dataset == "digits":
        assert s["dense"]["test_accuracy"] > 80


def test_fixed_seed_gives_the_same_numbers(tmp_path):
    args = ["--dataset", "synthetic", "--epochs", "2", "--only", "structured", "--quiet"]
    a = demo_main(args + ["--out", str(tmp_path / "a")])
    b = demo_main(args + ["--out", str(tmp_path / "b")])
    for method in ("dense", "wgsef", "group_lasso", "magnitude"):
        assert a["structured"][method]["test_accuracy"] == b["structured"][method]["test_accuracy"]
    assert a["structured"]["wgsef"]["history"] == b["structured"]["wgsef"]["history"]
