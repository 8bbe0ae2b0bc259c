"""ProxSGD: the torch.optim contract, equivalence with SGD + the float64 reference
prox, training to exactly k groups, checkpoint resume, compile, memory."""

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import wgsef
from tests import reference as ref


def small_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 12),
        nn.ReLU(),
        nn.Linear(12, 5),
    ).to(dtype)


def batch(step, dtype=torch.float64):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 3, 8, 8, generator=g, dtype=dtype), torch.randint(0, 5, (16,), generator=g)


def train(model, opt, steps, start=0):
    for s in range(start, start + steps):
        x, y = batch(s, next(model.parameters()).dtype)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


SGD_CONFIGS = [
    dict(lr=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    dict(lr=0.05, momentum=0.5, dampening=0.3, maximize=True),
]


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
@pytest.mark.parametrize("foreach", [False, True])
def test_unregularized_groups_match_sgd_exactly(cfg, foreach):
    a, b = small_model(), small_model()
    opt_a = torch.optim.SGD(a.parameters(), foreach=foreach, **cfg)
    opt_b = wgsef.ProxSGD(b.parameters(), foreach=foreach, **cfg)  # k=None: no prox
    for step in range(6):
        train(a, opt_a, 1, step)
        train(b, opt_b, 1, step)
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    # lam = 0 with a budget is the identity prox: still exactly SGD
    c = small_model()
    opt_c = wgsef.ProxSGD(c.parameters(), foreach=foreach, k=1, lam=0.0, groups="layer", **cfg)
    train(c, opt_c, 6)
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(pa, pc)


def reference_prox_group(tensors, specs, ks, lams, weights, shared):
    """Apply the float64 reference prox to a list of tensors, in place."""
    if not shared:
        for t, spec, k, lam, w in zip(tensors, specs, ks, lams, weights):
            t.copy_(torch.from_numpy(ref.prox(t, k, lam, spec, w)))
        return
    sqs, ds, idss = [], [], []
    for t, spec, w in zip(tensors, specs, weights):
        ids, m = ref.group_ids(tuple(t.shape), spec)
        sqs.append(ref.sq_norms(t.numpy(), ids, m))
        ds.append(np.ones(m) if w is None else np.asarray(w, dtype=np.float64))
        idss.append(ids)
    f = ref.prox_factors(np.concatenate(sqs), np.concatenate(ds), ks[0], lams[0])
    offset = 0
    for t, ids, sq in zip(tensors, idss, sqs):
        fi = f[offset : offset + sq.size]
        t.copy_(torch.from_numpy((t.numpy().reshape(-1) * fi[ids]).reshape(t.shape)))
        offset += sq.size


@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("cfg", SGD_CONFIGS[1:])
def test_matches_sgd_then_reference_prox(shared, cfg):
    model, ref_model = small_model(), small_model()
    convs = [model[0].weight, model[2].weight, model[5].weight]
    ref_convs = [ref_model[0].weight, ref_model[2].weight, ref_model[5].weight]
    specs = ["filters", "channels", ("heads", 3)]
    weights = [None, torch.linspace(0.5, 2.0, 8, dtype=torch.float64), None]
    lr, lam = cfg["lr"], [6.0, 3.0, 4.0]
    k = [3] if shared else [3, 4, 2]
    rest = [p for n, p in model.named_parameters() if n not in ("0.weight", "2.weight", "5.weight")]
    opt = wgsef.ProxSGD(
        [
            {
                "params": convs,
                "groups": specs,
                "weights": weights,
                "k": k[0] if shared else k,
                "lam": lam[0] if shared else lam,
                "shared_k": shared,
            },
            {"params": rest},
        ],
        **cfg,
    )
    sgd = torch.optim.SGD(ref_model.parameters(), **cfg)
    for step in range(25):
        train(model, opt, 1, step)
        train(ref_model, sgd, 1, step)
        with torch.no_grad():
            reference_prox_group(
                ref_convs,
                specs,
                k,
                [lr * v for v in (lam[:1] if shared else lam)],
                [None if w is None else w.tolist() for w in weights],
                shared,
            )
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    kept = sum(int((wgsef.group_norms(p, s) > 0).sum()) for p, s in zip(convs, specs))
    ref_kept = sum(int((wgsef.group_norms(p, s) > 0).sum()) for p, s in zip(ref_convs, specs))
    assert kept == ref_kept and kept < 8 + 8 + 3  # the prox pruned something


def test_least_squares_reaches_exactly_k_true_groups():
    # y = X w*, w* with 3 of 12 groups (of 4 weights) non-zero; recover them
    g = torch.Generator().manual_seed(3)
    X = torch.randn(400, 48, generator=g, dtype=torch.float64)
    w_true = torch.zeros(12, 4, dtype=torch.float64)
    true_groups = [1, 6, 10]
    w_true[true_groups] = torch.randn(3, 4, generator=g, dtype=torch.float64) + 2.0
    y = X @ w_true.reshape(-1) + 0.05 * torch.randn(400, generator=g, dtype=torch.float64)
    w = torch.zeros(12, 4, dtype=torch.float64, requires_grad=True)
    opt = wgsef.ProxSGD([w], lr=0.2, momentum=0.5, k=3, lam=0.05)
    for step in range(400):
        if step == 300:
            opt.freeze_support()
        opt.zero_grad()
        ((X @ w.reshape(-1) - y) ** 2).mean().mul(0.5).backward()
        opt.step()
    kept = torch.nonzero(w.detach().norm(dim=1)).flatten().tolist()
    assert kept == true_groups
    assert torch.count_nonzero(w.detach()[[i for i in range(12) if i not in true_groups]]) == 0
    torch.testing.assert_close(w.detach()[true_groups], w_true[true_groups], rtol=0, atol=0.05)
    report = wgsef.sparsity_report(opt)
    assert [(r.groups_kept, r.groups_total, r.k) for r in report] == [(3, 12, 3)]
    assert report[0].zero_fraction == pytest.approx(36 / 48)


def test_freeze_support_gives_at_most_k_groups_per_term_and_shared_budget():
    model = small_model()
    groups = wgsef.regularized_param_groups(model, k=0.5, lam=0.01)
    opt = wgsef.ProxSGD(groups, lr=0.05, momentum=0.9)
    train(model, opt, 5)
    opt.freeze_support()
    train(model, opt, 5, 5)
    for row in wgsef.sparsity_report(opt):
        assert row.groups_kept <= row.k
    # one budget over all filters of the model
    model2 = small_model()
    opt2 = wgsef.ProxSGD(wgsef.regularized_param_groups(model2, k=10, lam=0.01, shared_k=True), lr=0.05, momentum=0.9)
    train(model2, opt2, 5)
    opt2.freeze_support()
    train(model2, opt2, 5, 5)
    assert sum(r.groups_kept for r in wgsef.sparsity_report(opt2)) <= 10


def test_state_keys_are_the_same_before_and_after_the_freeze():
    # masks exist (all True) from the first step, so a checkpoint from either side of
    # the freeze has the keys the other expects (torch.distributed.checkpoint needs that)
    model = small_model()
    opt = wgsef.ProxSGD(wgsef.regularized_param_groups(model, k=0.5, lam=0.01), lr=0.05, momentum=0.9)
    train(model, opt, 2)
    before = copy.deepcopy(opt.state_dict())
    keys = {i: sorted(st) for i, st in before["state"].items()}
    reg = opt.param_groups[0]["params"]
    assert all(opt.state[p]["support_mask"].all() for p in reg)
    assert opt.support_masks() == {} and not opt.is_frozen()
    opt.freeze_support()
    after = opt.state_dict()
    assert {i: sorted(st) for i, st in after["state"].items()} == keys
    assert after["param_groups"][0]["frozen"] and not before["param_groups"][0]["frozen"]
    opt.load_state_dict(before)  # into the frozen optimizer: not frozen any more
    assert not opt.is_frozen() and opt.support_masks() == {}
    opt.load_state_dict(after)
    assert opt.is_frozen() and all(m.dtype == torch.bool for m in opt.support_masks().values())


def test_checkpoint_resume_is_bit_exact():
    def make():
        m = small_model()
        o = wgsef.ProxSGD(wgsef.regularized_param_groups(m, k=0.5, lam=0.2), lr=0.05, momentum=0.9, nesterov=True)
        return m, o

    model, opt = make()
    train(model, opt, 4)
    opt.freeze_support()
    train(model, opt, 2, 4)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, 5, 6)

    model2, opt2 = make()
    buf.seek(0)
    ckpt = torch.load(buf)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    train(model2, opt2, 5, 6)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    # and without the frozen phase
    model3, opt3 = make()
    train(model3, opt3, 3)
    state = copy.deepcopy((model3.state_dict(), opt3.state_dict()))
    train(model3, opt3, 3, 3)
    model4, opt4 = make()
    model4.load_state_dict(state[0])
    opt4.load_state_dict(state[1])
    train(model4, opt4, 3, 3)
    for p, q in zip(model3.parameters(), model4.parameters()):
        assert torch.equal(p, q)


def test_optimizer_contract():
    model = small_model()
    groups = wgsef.regularized_param_groups(model, k=2, lam=0.1)
    opt = wgsef.ProxSGD(groups, lr=0.1)
    assert opt.defaults["lam"] == 0.0 and opt.defaults["k"] is None
    assert opt.param_groups[0]["k"] == 2 and opt.param_groups[1]["k"] is None
    # closure's loss is returned; a param without grad is untouched
    x, y = batch(0)
    frozen = model[7].bias
    before = frozen.detach().clone()

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        frozen.grad = None
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.item() > 0
    assert torch.equal(frozen, before)
    # add_param_group fills defaults and validates
    extra = nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "k": 1, "lam": 0.5})
    assert opt.param_groups[-1]["momentum"] == 0 and opt.param_groups[-1]["groups"] == "filters"
    with pytest.raises(ValueError, match="k: 9 exceeds the number of groups"):
        opt.add_param_group({"params": [nn.Parameter(torch.randn(4, 3))], "k": 9})
    # state_dict round trip keeps the regularization options
    sd = opt.state_dict()
    assert [g["k"] for g in sd["param_groups"]] == [2, None, 1]
    # deepcopy works
    copy.deepcopy(opt)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lr=-0.1), "lr: expected lr >= 0"),
        (dict(lr=0.1, lam=-1.0, k=1), "lam: expected finite values >= 0"),
        (dict(lr=0.1, lam=float("nan"), k=1), "lam: expected finite values >= 0"),
        (dict(lr=0.1, lam=0.1, k=-1), "k: expected k >= 0"),
        (dict(lr=0.1, lam=0.1, k=7), "k: 7 exceeds the number of groups \\(6\\)"),
        (dict(lr=0.1, lam=0.1, k=1.5), "k: a kept fraction must lie in \\(0, 1\\]"),
        (dict(lr=0.1, lam=0.1, k=1, groups=("heads", 4)), "groups: \\('heads', 4\\) needs"),
        (dict(lr=0.1, lam=0.1, k=1, groups="rows"), "groups: expected one of"),
        (dict(lr=0.1, lam=0.1, k=1, weights=[torch.ones(5)]), "weights: params\\[0\\] has 6 groups"),
        (dict(lr=0.1, lam=0.1, k=1, weights=[-torch.ones(6)]), "weights: must be positive"),
        (dict(lr=0.1, momentum=-0.5), "momentum: expected momentum >= 0"),
        (dict(lr=0.1, nesterov=True), "nesterov: requires momentum > 0"),
        (dict(lr=0.1, lam=[0.1, 0.2], k=1), "lam: expected one value or one per parameter \\(1\\)"),
    ],
)
def test_bad_hyperparameters_raise_at_construction(kwargs, match):
    p = nn.Parameter(torch.randn(6, 5))
    with pytest.raises((ValueError, TypeError), match=match):
        wgsef.ProxSGD([p], **kwargs)


def compiled_steps_compile_once(make, steps=6):
    """Train two ``(model, opt)`` pairs from ``make()``, one through ``torch.compile(opt.step)``,
    with an ExponentialLR on each; they must agree at every step, and after the
    warm-up (step 0 creates the state, step 1 compiles) nothing recompiles.
    Returns the compiled pair's optimizer."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    (model, opt), (ref_model, ref_opt) = make(), make()
    scheds = [torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.8) for o in (opt, ref_opt)]
    compiled_step = torch.compile(opt.step)
    graphs_after_warmup = None
    for s in range(steps):
        if s == 2:
            graphs_after_warmup = counters["stats"]["unique_graphs"]
        x, y = batch(s, torch.float32)
        for m, o in ((model, opt), (ref_model, ref_opt)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
        compiled_step()
        ref_opt.step()
        for sched in scheds:
            sched.step()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == graphs_after_warmup
    return opt


def test_lr_scheduler_and_compile_one_graph():
    def make():
        m = small_model(dtype=torch.float32)
        groups = wgsef.regularized_param_groups(m, k=0.5, lam=0.3)
        return m, wgsef.ProxSGD(groups, lr=torch.tensor(0.05), momentum=0.9)

    opt = compiled_steps_compile_once(make)
    # four learning rates later, nothing was recompiled
    assert opt.param_groups[0]["lr"].item() == pytest.approx(0.05 * 0.8**6)


class AllocationRecorder(TorchDispatchMode):
    """Records every fresh (non-aliasing) tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            a.untyped_storage().data_ptr()
            for a in torch.utils._pytree.tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)
        }
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.sizes.append(t.numel())
        return out


def test_step_allocates_no_full_size_temporary():
    model = small_model(dtype=torch.float32)
    opt = wgsef.ProxSGD(wgsef.regularized_param_groups(model, k=0.5, lam=0.1), lr=0.05, momentum=0.9)
    train(model, opt, 1)  # momentum buffers exist from here on
    x, y = batch(1, torch.float32)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    largest = max(p.numel() for p in model.parameters())
    with AllocationRecorder() as rec:
        opt.step()
    assert rec.sizes == [] or max(rec.sizes) < largest // 4, rec.sizes


def test_param_groups_by_attention_heads():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 4, 32, batch_first=True))
    groups = wgsef.regularized_param_groups(model, k=2, lam=5.0, groups="heads")
    names = groups[0]["names"]
    assert "1.self_attn.in_proj_weight" in names and "1.self_attn.out_proj.weight" in names
    assert "1.self_attn.out_proj.weight" == names[names.index("1.self_attn.in_proj_weight") + 1]
    opt = wgsef.ProxSGD(groups, lr=0.1)
    x = torch.randn(3, 5, 8)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    opt.freeze_support()
    rows = {r.name: r for r in wgsef.sparsity_report(opt)}
    assert rows["1.self_attn.in_proj_weight"].groups_total == 12  # q, k, v x 4 heads
    assert rows["1.self_attn.out_proj.weight"].groups_total == 4
    assert all(r.groups_kept <= 2 for r in rows.values())
    # a pruned output head is a block of head_dim zero columns
    out = model[1].self_attn.out_proj.weight.detach()
    zero_cols = (out.abs().sum(0) == 0).reshape(4, 4)
    assert (zero_cols.all(1) | ~zero_cols.any(1)).all()


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
def test_fused_update_matches_the_foreach_step(cfg, device):
    # torch's fused SGD kernel for the update, then the same prox
    models = [small_model().to(device), small_model().to(device)]
    opts = [
        wgsef.ProxSGD(wgsef.regularized_param_groups(m, k=0.5, lam=0.3), foreach=not fused, fused=fused, **cfg)
        for m, fused in zip(models, (False, True))
    ]
    for step in range(4):
        for m, opt in zip(models, opts):
            x, y = batch(step)
            opt.zero_grad()
            nn.functional.cross_entropy(m(x.to(device)), y.to(device)).backward()
            opt.step()
    for pa, pb in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="fused: not with capturable=True"):
        wgsef.ProxSGD(small_model().parameters(), fused=True, capturable=True)


@pytest.mark.parametrize("cfg", SGD_CONFIGS)
@pytest.mark.parametrize("shared", [False, True])
def test_capturable_step_matches_the_default_step(cfg, shared):
    # the same steps computed by foreach ops with lr and lam as tensors on the device
    models = [small_model(), small_model()]
    opts = [
        wgsef.ProxSGD(wgsef.regularized_param_groups(m, k=0.5, lam=0.3, shared_k=shared), capturable=cap, **cfg)
        for m, cap in zip(models, (False, True))
    ]
    for step in range(4):
        for m, opt in zip(models, opts):
            train(m, opt, 1, step)
        for pa, pb in zip(*(m.parameters() for m in models)):
            torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-14)
    opts[1].freeze_support()
    opts[0].freeze_support()
    for m, opt in zip(models, opts):
        train(m, opt, 2, 4)
    for pa, pb in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-14)


def test_capturable_reads_a_tensor_lr_in_place_and_rejects_bad_options():
    a, b = small_model(), small_model()
    lr = torch.tensor(0.05, dtype=torch.float64)
    opt_a = wgsef.ProxSGD(wgsef.regularized_param_groups(a, k=0.5, lam=0.3), lr=0.05, momentum=0.9)
    opt_b = wgsef.ProxSGD(wgsef.regularized_param_groups(b, k=0.5, lam=0.3), lr=lr, momentum=0.9, capturable=True)
    for step, value in enumerate([0.05, 0.02, 0.01]):
        for group in opt_a.param_groups:
            group["lr"] = value
        lr.fill_(value)  # a schedule that a captured step would see
        train(a, opt_a, 1, step)
        train(b, opt_b, 1, step)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="capturable: expected a bool"):
        wgsef.ProxSGD(small_model().parameters(), capturable=1)
    mixed = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))]
    with pytest.raises(ValueError, match="capturable: the params of a param group must share one device"):
        wgsef.ProxSGD(mixed, capturable=True)


def test_capturable_per_tensor_lam_with_a_param_lacking_its_gradient():
    # per-tensor lam entries follow the params that have a gradient this step
    models = [small_model(), small_model()]
    opts = []
    for m, cap in zip(models, (False, True)):
        convs = [m[0].weight, m[2].weight]
        opts.append(
            wgsef.ProxSGD([{"params": convs, "k": 0.5, "lam": [0.2, 0.4]}], lr=0.05, momentum=0.9, capturable=cap)
        )
    for step in range(3):
        for m, opt in zip(models, opts):
            x, y = batch(step)
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            m[0].weight.grad = None  # the first conv sits this step out
            opt.step()
    for pa, pb in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(pb, pa, rtol=1e-12, atol=1e-14)


def test_a_step_that_would_fail_changes_nothing():
    p1 = nn.Parameter(torch.randn(3, 4))
    p2 = nn.Parameter(torch.randn(3, 4))
    ids = torch.tensor([[0, 1, 2, 5]] * 3)
    # ids out of range for the weights: rejected when the optimizer is built, naming the tensor
    with pytest.raises(ValueError, match=r"group ids must lie in \[0, 3\).*\(for params\[1\]\)"):
        wgsef.ProxSGD([p1, p2], lr=0.1, k=1, lam=0.5, groups=["filters", ids], weights=[None, torch.ones(3)])
    opt = wgsef.ProxSGD([p1, p2], lr=0.1, momentum=0.9, k=1, lam=0.5)
    p1.grad, p2.grad = torch.randn(3, 4), torch.randn(3, 4)
    opt.step()
    before = [p1.detach().clone(), p2.detach().clone()]
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in (p1, p2)]
    opt.param_groups[0]["lam"] = -1.0  # changed after construction
    with pytest.raises(ValueError, match="lam: expected finite values >= 0"):
        opt.step()
    opt.param_groups[0]["lam"] = 0.5
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match="lr: expected lr >= 0 in param group 0"):
        opt.step()
    for p, b, buf in zip((p1, p2), before, buffers):
        assert torch.equal(p.detach(), b)
        assert torch.equal(opt.state[p]["momentum_buffer"], buf)


def test_params_that_share_memory():
    # the same param twice would take the prox twice: refused when the optimizer is
    # built (torch only warns), so no step half-updates it
    p = nn.Parameter(torch.randn(4, 6, dtype=torch.float64))
    with pytest.warns(UserWarning, match="duplicate parameters"):
        with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
            wgsef.ProxSGD([p, p], lr=0.1, k=2, lam=0.5)
    base = torch.randn(6, 6)  # dense (transposed) row blocks that overlap
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        wgsef.ProxSGD([nn.Parameter(base[:4].t()), nn.Parameter(base[2:].t())], lr=0.1, k=1, lam=0.5)
    meta = [nn.Parameter(torch.empty(4, 3, device="meta")) for _ in range(2)]  # no memory to share
    wgsef.ProxSGD(meta, lr=0.1, k=1, lam=0.5)
    for make in (
        lambda ps: wgsef.ProxSGD(ps, lr=0.1, momentum=0.9, k=2, lam=0.5, groups="elements"),
        lambda ps: wgsef.ProxOptimizer(torch.optim.Adam(ps, lr=0.1), k=2, lam=0.5, groups="elements"),
    ):
        # column blocks of one matrix interleave in memory but share no element: they
        # step exactly as separate params
        w = torch.randn(6, 8, dtype=torch.float64)
        blocks = [nn.Parameter(w[:, :4]), nn.Parameter(w[:, 4:])]
        separate = [nn.Parameter(w[:, :4].clone()), nn.Parameter(w[:, 4:].clone())]
        opts = [make(blocks), make(separate)]
        for _ in range(2):
            for ps, opt in zip((blocks, separate), opts):
                for q in ps:
                    q.grad = torch.ones_like(q)
                opt.step()
        for a, b in zip(blocks, separate):
            assert torch.equal(a.detach(), b.detach())


def test_sparse_gradients_in_a_group_without_budget_behave_like_sgd():
    torch.manual_seed(0)
    emb, ref_emb = nn.Embedding(10, 3, sparse=True), nn.Embedding(10, 3, sparse=True)
    ref_emb.load_state_dict(emb.state_dict())
    lin = nn.Linear(3, 4)
    opt = wgsef.ProxSGD([{"params": [emb.weight], "k": None}, {"params": [lin.weight], "k": 2, "lam": 0.1}], lr=0.1)
    ref_opt = torch.optim.SGD(ref_emb.parameters(), lr=0.1)
    idx = torch.tensor([1, 4, 4, 7])
    for _ in range(3):
        opt.zero_grad()
        ref_opt.zero_grad()
        lin(emb(idx)).sum().backward()
        ref_emb(idx).sum(0).mul(lin.weight.detach().sum(0)).sum().backward()
        opt.step()
        ref_opt.step()
    assert torch.equal(emb.weight, ref_emb.weight)
    # a sparse gradient in a group with a budget is refused before anything moves
    bad = nn.Embedding(10, 3, sparse=True)
    budget = {"k": 2, "lam": 0.1}
    opt = wgsef.ProxSGD([{"params": [lin.weight], **budget}, {"params": [bad.weight], **budget}], lr=0.1)
    lin.weight.grad = torch.ones_like(lin.weight)
    bad(idx).sum().backward()
    w0 = lin.weight.detach().clone()
    with pytest.raises(RuntimeError, match="params\\[0\\] of param group 1 has a sparse gradient"):
        opt.step()
    assert torch.equal(lin.weight.detach(), w0)


def test_freeze_support_with_weights_for_more_groups_than_elements():
    c = nn.Parameter(torch.randn(2, 2))
    ids = torch.arange(4).reshape(2, 2)
    opt = wgsef.ProxSGD([c], lr=0.1, lam=1.0, k=2, groups=[ids], weights=[torch.ones(10)])
    c.grad = torch.randn(2, 2)
    opt.step()
    opt.freeze_support()
    assert int((c.detach() != 0).sum()) <= 2


def test_a_budget_changed_to_an_invalid_value_raises_before_the_update():
    w = nn.Parameter(torch.randn(8, 3))
    opt = wgsef.ProxSGD([w], lr=0.1, momentum=0.9, k=2, lam=0.1)
    w.grad = torch.randn(8, 3)
    opt.step()
    before, buffer = w.detach().clone(), opt.state[w]["momentum_buffer"].clone()
    opt.param_groups[0]["k"] = 100
    with pytest.raises(ValueError, match="exceeds the number of groups"):
        opt.step()
    assert torch.equal(w.detach(), before) and torch.equal(opt.state[w]["momentum_buffer"], buffer)


def test_two_dimensional_weights_raise_at_construction():
    w = nn.Parameter(torch.randn(10, 3))
    with pytest.raises(ValueError, match=r"weights: expected a 1-D tensor for params\[0\], got shape \(2, 5\)"):
        wgsef.ProxSGD([{"params": [w], "k": 3, "lam": 0.1, "weights": [torch.ones(2, 5)]}], lr=0.1)
