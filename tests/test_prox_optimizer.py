"""ProxOptimizer: any torch.optim optimizer followed by the WGSEF prox, checked
against the base optimizer alone followed by the float64 reference prox."""

import io

import pytest
import torch
from torch import nn

import wgsef
from tests import reference as ref
from tests.test_optim import batch, compiled_steps_compile_once, small_model, train

BASES = {
    "SGD": lambda p, **kw: torch.optim.SGD(p, lr=0.05, momentum=0.9, **kw),
    "Adam": lambda p, **kw: torch.optim.Adam(p, lr=1e-2, **kw),
    "AdamW": lambda p, **kw: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, **kw),
    "RMSprop": lambda p, **kw: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, **kw),
    "Adagrad": lambda p, **kw: torch.optim.Adagrad(p, lr=0.05, **kw),
    "NAdam": lambda p, **kw: torch.optim.NAdam(p, lr=1e-2, **kw),
    "RAdam": lambda p, **kw: torch.optim.RAdam(p, lr=1e-2, **kw),
}
VARIANTS = [{"foreach": False}, {"foreach": True}]
FUSED = {"SGD", "Adam", "AdamW", "Adagrad"}  # torch's fused CPU kernels

SPECS = ["filters", "channels", ("heads", 3)]
K = [3, 4, 2]
LAM = [4.0, 2.0, 3.0]


def regularized(model):
    convs = [model[0].weight, model[2].weight, model[5].weight]
    rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "2.weight", "5.weight")]
    return convs, rest


def cases():
    for name in BASES:
        for variant in VARIANTS + ([{"fused": True}] if name in FUSED else []):
            yield pytest.param(name, variant, id=f"{name}-{next(iter(variant))}")


@pytest.mark.parametrize("name, variant", list(cases()))
def test_matches_the_base_step_then_the_reference_prox(name, variant):
    model, ref_model = small_model(), small_model()
    convs, rest = regularized(model)
    ref_convs, _ = regularized(ref_model)
    plain = BASES[name](ref_model.parameters(), **variant)
    lr = plain.param_groups[0]["lr"]
    lams = [v * 0.05 / lr for v in LAM]  # the same prox strength lr * lam for every base
    base = BASES[name]([{"params": convs, "groups": SPECS, "k": K, "lam": lams}, {"params": rest}], **variant)
    opt = wgsef.ProxOptimizer(base)
    for step in range(12):
        train(model, opt, 1, step)
        train(ref_model, plain, 1, step)
        with torch.no_grad():  # the prox of lr * lam * WGSEF, per tensor, in float64
            for q, spec, k, lam in zip(ref_convs, SPECS, K, lams):
                q.copy_(torch.from_numpy(ref.prox(q, k, lr * lam, spec)))
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    kept = sum(int((wgsef.group_norms(p, s) > 0).sum()) for p, s in zip(convs, SPECS))
    assert kept < 8 + 8 + 3  # the prox pruned something


@pytest.mark.parametrize("name", list(BASES))
def test_groups_without_budget_step_exactly_like_the_base(name):
    model, ref_model = small_model(), small_model()
    opt = wgsef.ProxOptimizer(BASES[name](model.parameters()))  # no k: no prox anywhere
    plain = BASES[name](ref_model.parameters())
    train(model, opt, 5)
    train(ref_model, plain, 5)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        assert torch.equal(p, q)


def test_defaults_regularize_every_group_and_freeze_to_exactly_k():
    model = small_model()
    convs, rest = regularized(model)
    opt = wgsef.ProxOptimizer(
        torch.optim.AdamW([{"params": convs}, {"params": rest, "k": None}], lr=1e-2), k=0.5, lam=1.0
    )
    assert opt.param_groups[0]["k"] == 0.5 and opt.param_groups[1]["k"] is None
    train(model, opt, 5)
    assert not opt.is_frozen() and opt.support_masks() == {}
    opt.freeze_support()
    train(model, opt, 5, 5)
    assert opt.is_frozen()
    masks = opt.support_masks()
    assert set(map(id, masks)) == set(map(id, convs))
    for p in convs:
        kept = wgsef.group_norms(p, "filters") > 0
        assert int(kept.sum()) == p.shape[0] // 2
        assert torch.equal(kept, masks[p])
    report = wgsef.sparsity_report(opt)
    assert [r.groups_kept for r in report] == [r.k for r in report] == [4, 3, 6]
    # the regularizer is sum_t lam_t WGSEF_t, each term against the reference value
    want = sum(ref.value(p, max(1, round(0.5 * p.shape[0]))) for p in convs)
    assert float(opt.regularizer().detach()) == pytest.approx(want, rel=1e-12)


def test_state_dict_round_trip_keeps_base_state_and_masks():
    def make():
        m = small_model()
        groups = wgsef.regularized_param_groups(m, k=0.5, lam=0.5)
        return m, wgsef.ProxOptimizer(torch.optim.AdamW(groups, lr=1e-2))

    model, opt = make()
    train(model, opt, 3)
    opt.freeze_support()
    train(model, opt, 2, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    assert "exp_avg" in opt.state_dict()["state"][0] and "support_mask" in opt.state_dict()["state"][0]
    train(model, opt, 4, 5)

    model2, opt2 = make()
    buf.seek(0)
    ckpt = torch.load(buf)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.is_frozen() and opt2.param_groups is opt2.base_optimizer.param_groups
    assert opt2.state is opt2.base_optimizer.state
    train(model2, opt2, 4, 5)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_lr_scheduler_on_the_wrapper_scales_the_prox():
    model, ref_model = small_model(), small_model()
    convs, rest = regularized(model)
    ref_convs, _ = regularized(ref_model)
    opt = wgsef.ProxOptimizer(torch.optim.Adam([{"params": convs, "k": 2, "lam": 3.0}, {"params": rest}], lr=1e-2))
    plain = torch.optim.Adam(ref_model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(plain, step_size=1, gamma=0.5)
    for step in range(4):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(1e-2 * 0.5**step)
        train(model, opt, 1, step)
        train(ref_model, plain, 1, step)
        with torch.no_grad():
            for q in ref_convs:
                q.copy_(torch.from_numpy(ref.prox(q, 2, lr * 3.0, "filters")))
        sched.step()
        ref_sched.step()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_add_param_group_and_zero_grad_go_to_the_base():
    model = small_model()
    convs, rest = regularized(model)
    base = torch.optim.AdamW(rest, lr=1e-3)
    opt = wgsef.ProxOptimizer(base, lam=0.1)
    opt.add_param_group({"params": convs, "k": 2})
    assert len(base.param_groups) == 2 and base.param_groups[1]["lam"] == 0.1
    assert base.param_groups[1]["weight_decay"] == base.defaults["weight_decay"]
    with pytest.raises(ValueError, match=r"param group 2: k: 9 exceeds the number of groups \(8\)"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(8, 3))], "k": 9})
    assert len(base.param_groups) == 2  # the bad group was not kept
    x, y = batch(0)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_bad_input_raises_at_construction_naming_the_group():
    model = small_model()
    convs, rest = regularized(model)
    with pytest.raises(TypeError, match=r"base_optimizer: expected a torch\.optim\.Optimizer, got list"):
        wgsef.ProxOptimizer([torch.optim.SGD(rest, lr=0.1)])
    with pytest.raises(TypeError, match="already applies the WGSEF prox"):
        wgsef.ProxOptimizer(wgsef.ProxSGD(rest, lr=0.1))
    with pytest.raises(ValueError, match=r"param group 0: lam: expected finite values >= 0"):
        wgsef.ProxOptimizer(torch.optim.Adam([{"params": convs, "k": 2, "lam": -1.0}]))
    with pytest.raises(ValueError, match=r"param group 1: k: a kept fraction must lie in \(0, 1\]"):
        wgsef.ProxOptimizer(torch.optim.Adam([{"params": rest}, {"params": convs, "k": 1.5, "lam": 1.0}]))
    with pytest.raises(ValueError, match=r"param group 0: .*\(for params\[0\]\)"):
        wgsef.ProxOptimizer(torch.optim.Adam([{"params": [model[0].bias], "k": 1, "groups": ("heads", 5)}]))


def test_a_step_that_would_fail_changes_nothing():
    model = small_model()
    convs, rest = regularized(model)
    opt = wgsef.ProxOptimizer(torch.optim.AdamW([{"params": convs, "k": 2, "lam": 1.0}, {"params": rest}]))
    train(model, opt, 1)
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[convs[0]].items() if torch.is_tensor(v)}
    opt.param_groups[0]["lam"] = -2.0
    x, y = batch(1)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match="param group 0: lam"):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(torch.equal(opt.state[convs[0]][k], v) for k, v in state.items())


def test_the_transformer_example_ends_with_exactly_k_heads(monkeypatch, capsys):
    import runpy
    from pathlib import Path

    pytest.importorskip("sklearn")
    pytest.importorskip("torch_pruning")
    script = Path(__file__).parent.parent / "examples" / "transformer_heads.py"
    monkeypatch.setattr("sys.argv", [str(script), "--epochs", "4"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "heads per layer [2, 2], MLP widths [32, 32]" in out
    assert "68/136" in out  # 2 of 4 heads and 32 of 64 hidden units in each of the two layers


def test_step_hooks_run_around_the_whole_step():
    model, ref_model = small_model(), small_model()
    opt = wgsef.ProxOptimizer(torch.optim.AdamW(wgsef.regularized_param_groups(model, k=2, lam=100.0), lr=1e-2))
    plain = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append(("pre", model[0].weight.detach().clone())))
    opt.register_step_post_hook(lambda o, args, kwargs: seen.append(("post", model[0].weight.detach().clone())))
    before = model[0].weight.detach().clone()
    train(model, opt, 1)
    train(ref_model, plain, 1)
    assert [s[0] for s in seen] == ["pre", "post"]
    assert torch.equal(seen[0][1], before)
    # the post hook sees the prox's result, not the bare AdamW step
    assert torch.equal(seen[1][1], model[0].weight)
    assert float(seen[1][1].norm()) < 0.5 * float(ref_model[0].weight.detach().norm())


def test_compiled_step_with_a_scheduled_tensor_lr_compiles_once():
    def make():
        m = small_model(dtype=torch.float32)
        groups = wgsef.regularized_param_groups(m, k=0.5, lam=0.3)
        return m, wgsef.ProxOptimizer(torch.optim.AdamW(groups, lr=torch.tensor(1e-2)))

    opt = compiled_steps_compile_once(make)
    assert opt.param_groups[0]["lr"].item() == pytest.approx(1e-2 * 0.8**6)


@pytest.mark.parametrize("name", ["AdamW", "RMSprop", "NAdam"])
def test_freeze_before_the_first_step_lets_the_base_initialise_its_state(name):
    model = small_model()
    convs, rest = regularized(model)
    opt = wgsef.ProxOptimizer(BASES[name]([{"params": convs, "k": 2, "lam": 0.1}, {"params": rest}]))
    opt.freeze_support()  # masks are the only state so far
    train(model, opt, 3)
    assert all(int((wgsef.group_norms(p, "filters") > 0).sum()) == 2 for p in convs)
    assert all(len(opt.state[p]) > 1 for p in convs)  # the base's own state exists next to the mask


def test_copy_and_pickle_give_a_working_optimizer():
    import copy
    import pickle

    model = small_model()
    opt = wgsef.ProxOptimizer(torch.optim.AdamW(wgsef.regularized_param_groups(model, k=2, lam=1.0), lr=1e-2))
    train(model, opt, 2)
    for clone in (copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))):
        m2, o2 = clone
        assert o2.param_groups is o2.base_optimizer.param_groups and o2.state is o2.base_optimizer.state
        train(m2, o2, 2, 2)
    train(model, opt, 2, 2)
    for p, q in zip(model.parameters(), m2.parameters()):
        assert torch.equal(p, q)


def test_groups_without_budget_keys_get_them():
    model = small_model()
    convs, rest = regularized(model)
    base = torch.optim.AdamW([{"params": convs, "k": 2, "lam": 0.5}], lr=1e-2)
    opt = wgsef.ProxOptimizer(base)
    base.add_param_group({"params": rest})  # added to the base directly
    train(model, opt, 1)
    assert base.param_groups[1]["k"] is None
    # a checkpoint of a plain AdamW (no budget keys) keeps the wrapper's budgets
    plain = torch.optim.AdamW([{"params": convs}, {"params": rest}], lr=1e-2)
    opt.load_state_dict(plain.state_dict())
    assert opt.param_groups[0]["k"] == 2 and opt.param_groups[0]["lam"] == 0.5
    train(model, opt, 1, 1)


def test_masks_stay_bool_after_load_and_load_hooks_run():
    model = small_model()
    opt = wgsef.ProxOptimizer(torch.optim.AdamW(wgsef.regularized_param_groups(model, k=2, lam=1.0), lr=1e-2))
    train(model, opt, 1)
    opt.freeze_support()
    saved = opt.state_dict()
    calls = []
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("post"))
    opt.load_state_dict(saved)
    assert calls == ["pre", "post"]
    assert {m.dtype for m in opt.support_masks().values()} == {torch.bool}


def test_a_regularized_group_without_params_is_skipped():
    model = small_model()
    opt = wgsef.ProxOptimizer(
        torch.optim.AdamW([{"params": list(model.parameters())}, {"params": [], "k": 0.5, "lam": 0.1}])
    )
    train(model, opt, 1)
    opt.freeze_support()
    assert float(opt.regularizer().detach()) == 0.0 and not opt.is_frozen()


def test_numpy_budgets_work_and_a_non_bool_shared_k_raises():
    import numpy as np

    model = small_model()
    convs, _ = regularized(model)
    opt = wgsef.ProxOptimizer(torch.optim.AdamW([{"params": convs, "k": np.int64(2), "lam": 0.1}]))
    train(model, opt, 1)
    assert opt.prox_terms(opt.param_groups[0]).k == [2, 2, 2]
    opt = wgsef.ProxOptimizer(torch.optim.AdamW([{"params": convs, "k": np.float64(0.75), "lam": 0.1}]))
    assert opt.prox_terms(opt.param_groups[0]).k == [6, 4, 9]  # round(0.75 * (8, 6, 12)): 4.5 -> 4
    with pytest.raises(TypeError, match=r"param group 0: shared_k: expected a bool, got 'False'"):
        wgsef.ProxOptimizer(torch.optim.AdamW([{"params": convs, "k": 2, "lam": 0.1, "shared_k": "False"}]))


@pytest.mark.cuda
def test_capturable_adam_step_is_graph_safe_and_matches_the_default():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    models = [small_model(dtype=torch.float32).cuda() for _ in range(2)]
    opts = [
        wgsef.ProxOptimizer(
            torch.optim.Adam(wgsef.regularized_param_groups(m, k=0.5, lam=0.5), lr=1e-2, capturable=capturable)
        )
        for m, capturable in zip(models, (True, False))
    ]
    for step in range(3):
        x, y = (t.cuda() for t in batch(step, torch.float32))
        for m, o in zip(models, opts):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
    # a captured step replays without host synchronisation
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.cuda.graph(graph):
        opts[0].step()
    graph.replay()
    torch.cuda.synchronize()
    assert all(torch.isfinite(p).all() for p in models[0].parameters())


@pytest.mark.parametrize("capturable", [False, True])
def test_lists_edited_in_place_take_effect(capturable):
    model, ref_model = small_model(), small_model()
    convs, rest = regularized(model)
    ref_convs, _ = regularized(ref_model)
    lam, specs = [4.0, 2.0, 3.0], ["filters", "filters", "filters"]
    group = {"params": convs, "k": [3, 4, 2], "lam": lam, "groups": specs, "capturable": capturable}
    opt = wgsef.ProxOptimizer(torch.optim.SGD([group, {"params": rest}], lr=0.05))
    plain = torch.optim.SGD(ref_model.parameters(), lr=0.05)
    for step in range(3):
        if step == 1:
            lam[1] = 20.0  # edited in place: the prox must see the new value
            specs[0] = "channels"
        train(model, opt, 1, step)
        train(ref_model, plain, 1, step)
        with torch.no_grad():
            for q, spec, k, v in zip(ref_convs, specs, [3, 4, 2], lam):
                q.copy_(torch.from_numpy(ref.prox(q, k, 0.05 * v, spec)))
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
