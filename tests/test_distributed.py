"""Many processes: ProxSGD, ProxOptimizer and the functional API under FSDP2 (1-D and
HSDP meshes), DDP and ZeroRedundancyOptimizer, and checkpoints through
torch.distributed.checkpoint, with the gloo backend on one machine.

Every rank also runs the same training unsharded (a single-process reference on
the same batches); sharded results must match it (float64, within 1e-12), frozen
masks and kept groups exactly, and every rank must hold the same bits.
"""

from __future__ import annotations

import os
import queue
import tempfile
import time
import traceback

import pytest
import torch
import torch.distributed as dist
from torch import nn

import wgsef

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")

TIMEOUT = 120  # seconds for one multi-process run, start-up included


def _entry(rank, world, init_file, worker, args, results):
    try:
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
        results.put((rank, None, worker(rank, world, *args)))
    except BaseException:
        results.put((rank, traceback.format_exc(), None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(world: int, worker, *args):
    """worker(rank, world, *args) on `world` spawned processes; the return values by
    rank. A failure or a run past TIMEOUT (a deadlock) fails the test."""
    ctx = torch.multiprocessing.get_context("spawn")
    results = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        procs = [
            ctx.Process(target=_entry, args=(rank, world, init_file, worker, args, results), daemon=True)
            for rank in range(world)
        ]
        for p in procs:
            p.start()
        deadline = time.monotonic() + TIMEOUT
        out, errors = {}, []
        try:
            while len(out) + len(errors) < world:
                try:
                    rank, error, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
                except queue.Empty:
                    raise AssertionError(
                        f"ranks {sorted(set(range(world)) - set(out))} hung past {TIMEOUT} s"
                    ) from None
                if error is not None:
                    errors.append(f"rank {rank}:\n{error}")
                else:
                    out[rank] = value
        finally:
            for p in procs:
                p.join(timeout=5)
                if p.is_alive():
                    p.kill()
    assert not errors, "\n".join(errors)
    return [out[r] for r in range(world)]


# -- models and param groups -------------------------------------------------------


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 5)).double()


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.c2, self.b2 = nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = torch.relu(self.b1(self.c1(x)))
        h = h + torch.relu(self.b2(self.c2(h)))
        return self.fc(h.mean((2, 3)))


def linear_weights(model):
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    names = {id(p): n for n, p in model.named_parameters()}
    weights = [m.weight for m in layers]
    others = [p for p in model.parameters() if id(p) not in {id(w) for w in weights}]
    return weights, [names[id(w)] for w in weights], others


def groups_for(config: str, model) -> list[dict]:
    weights, names, others = linear_weights(model)
    rest = {"params": others, "k": None}
    if config == "per_tensor":  # heads that shard boundaries split, partial channels, uneven filters
        specs = [("heads", 5), "channels", "filters"]
        return [{"params": weights, "names": names, "groups": specs, "k": [3, 4, 2], "lam": [0.5, 0.3, 0.8]}, rest]
    if config == "shared_elements":  # one term across FSDP units
        return [{"params": weights, "names": names, "groups": "elements", "k": 0.3, "lam": 0.2, "shared_k": True}, rest]
    if config == "shared_layers":
        return [{"params": weights, "names": names, "groups": "layer", "k": 2, "lam": 1.0, "shared_k": True}, rest]
    if config == "sgd_options":  # every branch of the fused SGD step, and a group without momentum
        return [
            {"params": [weights[0]], "groups": "filters", "k": 3, "lam": 0.5, "weight_decay": 0.01, "nesterov": True},
            {"params": [weights[1]], "groups": "channels", "k": 4, "lam": 0.3, "dampening": 0.2, "maximize": True},
            {"params": [weights[2]], "groups": "filters", "k": 2, "lam": 0.8, "momentum": 0.0, "weight_decay": 0.1},
            rest,
        ]
    if config == "ids_weights":
        ids = torch.arange(120).reshape(10, 12) % 9
        w0 = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)
        w2 = torch.linspace(1.0, 3.0, 5, dtype=torch.float64)
        return [
            {
                "params": [weights[0], weights[2]],
                "names": [names[0], names[2]],
                "groups": [ids, "filters"],
                "weights": [w0, w2],
                "k": [4, 2],
                "lam": 0.6,
            },
            {"params": [weights[1], *others], "k": None},
        ]
    raise ValueError(config)


def model_pair(config: str):
    """(reference, model, batch shape, ref_groups, groups): two equal models, with their
    coupled groups for the "coupled" config (traced before any sharding), else None."""
    if config != "coupled":
        return mlp(), mlp(), (16, 12), None, None
    reference, model, shape = ResidualNet(), ResidualNet(), (4, 3, 6, 6)
    ref_groups = wgsef.coupled_param_groups(reference.double(), batch(0, shape), k=0.5, lam=0.5)
    groups = wgsef.coupled_param_groups(model.double(), batch(0, shape), k=0.5, lam=0.5)
    return reference, model, shape, ref_groups, groups


def batch(step: int, shape=(16, 12)) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + step))


def side_by_side(runs, steps: int | range, freeze_at: int, shape=(16, 12), after_step=None) -> None:
    """Train (model, optimizer, freeze) runs in lockstep on the same batches (batch i at
    step i; `steps` a count or a range of step indices)."""
    for step in range(steps) if isinstance(steps, int) else steps:
        x = batch(step, shape)
        for net, opt, freeze in runs:
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
            if step == freeze_at:
                freeze()
        if after_step is not None:
            after_step(step)


def train(model, opt, steps: int | range, freeze_at: int = -1) -> None:
    side_by_side([(model, opt, opt.freeze_support)], steps, freeze_at)


def full(p: torch.Tensor) -> torch.Tensor:
    p = p.detach()
    return p.full_tensor() if isinstance(p, torch.distributed.tensor.DTensor) else p


def assert_same_on_every_rank(tensors: list[torch.Tensor]) -> None:
    mine = [t.cpu().contiguous().view(torch.uint8).clone() if t.dtype != torch.bool else t.cpu() for t in tensors]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    for other in everyone:
        assert all(torch.equal(a, b) for a, b in zip(mine, other)), "ranks differ"


def compare(model, reference, opt, ref_opt) -> None:
    fulls = [full(p) for p in model.parameters()]
    for p, want in zip(fulls, reference.parameters()):
        torch.testing.assert_close(p, want.detach(), rtol=0, atol=1e-12)
    masks = list(opt.support_masks().values())
    assert [m.tolist() for m in masks] == [m.tolist() for m in ref_opt.support_masks().values()]
    for group, ref_group in zip(opt.param_groups, ref_opt.param_groups):
        if group["k"] is None:
            continue
        terms, ref_terms = opt.prox_terms(group), ref_opt.prox_terms(ref_group)
        kept = [n > 0 for n in terms.term_norms(group["params"])]
        assert [t.tolist() for t in kept] == [(n > 0).tolist() for n in ref_terms.term_norms(ref_group["params"])]
    assert_same_on_every_rank(fulls + masks)


# -- FSDP2 -------------------------------------------------------------------------


def _fsdp_worker(rank, world, mesh_shape, configs):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    names = ("replicate", "shard") if len(mesh_shape) == 2 else None  # HSDP: replicate x shard
    mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=names)
    calls = {}  # the ops that the steps on strided groups take, by name

    def counting(name):
        op = getattr(wgsef.ops, name)
        return lambda *args, **kwargs: calls.setdefault(name, []).append(1) or op(*args, **kwargs)

    for name in ("sgd_group_squares_", "prox_elements_"):
        setattr(wgsef.ops, name, counting(name))
    for config in configs:
        calls.clear()
        coupled = config == "coupled"
        reference, model, shape, ref_groups, groups = model_pair(config)
        for layer in [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        if coupled:
            groups = wgsef.rebind_param_groups(groups, model)
        else:
            spec = "per_tensor" if config == "adamw" else config
            ref_groups, groups = groups_for(spec, reference), groups_for(spec, model)
        if config == "adamw":
            ref_opt = wgsef.ProxOptimizer(torch.optim.AdamW(ref_groups, lr=0.05))
            opt = wgsef.ProxOptimizer(torch.optim.AdamW(groups, lr=0.05))
        else:
            foreach = config == "shared_elements"  # foreach SGD on DTensors, too
            ref_opt = wgsef.ProxSGD(ref_groups, lr=0.1, momentum=0.9, foreach=foreach)
            opt = wgsef.ProxSGD(groups, lr=0.1, momentum=0.9, foreach=foreach)

        def check(step):
            compare(model, reference, opt, ref_opt)
            if step == 2:  # before the freeze; a collective
                torch.testing.assert_close(opt.regularizer(), ref_opt.regularizer().detach(), rtol=1e-12, atol=0)

        runs = [(reference, ref_opt, ref_opt.freeze_support), (model, opt, opt.freeze_support)]
        side_by_side(runs, 6, freeze_at=3, shape=shape, after_step=check)
        assert ("sgd_group_squares_" in calls) == (config in FUSED_CONFIGS), config
        assert ("prox_elements_" in calls) == (config == "shared_elements"), config
        report = str(wgsef.sparsity_report(opt))
        assert report == str(wgsef.sparsity_report(ref_opt)), config
    return True


CONFIGS = ["per_tensor", "shared_elements", "shared_layers", "sgd_options", "ids_weights", "coupled", "adamw"]
# configs whose groups are all strided on every shard: ProxSGD fuses SGD with the norms
# (per_tensor's heads are split by shard boundaries; ids and coupled groups are not
# strided; single-element groups search by passes, prox_elements_, without norms)
FUSED_CONFIGS = {"shared_layers", "sgd_options"}


def test_fsdp2_two_ranks():
    run_ranks(2, _fsdp_worker, (2,), CONFIGS)


def test_fsdp2_four_ranks_uneven_and_empty_shards_and_hsdp():
    # 1-D mesh of 4: the 5-row layer splits 2, 2, 1, 0 (an empty shard); then HSDP
    run_ranks(4, _fsdp_worker, (4,), ["per_tensor", "shared_elements", "coupled"])
    run_ranks(4, _fsdp_worker, (2, 2), ["per_tensor", "ids_weights", "sgd_options", "shared_elements"])


# -- the functional API and N:M on DTensors ------------------------------------------


def _functional_worker(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    x = torch.randn(10, 6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    x[3] = 0  # a zero group
    ids = torch.arange(x.numel()).reshape(x.shape) % 11
    cases = [
        ("filters", None),
        ("channels", torch.linspace(0.5, 2.0, 6, dtype=torch.float64)),
        ("shapes", None),
        ("layer", None),
        ("elements", None),
        (("heads", 5), None),
        (ids, torch.linspace(1.0, 2.0, 11, dtype=torch.float64)),
    ]
    for placement in (Shard(0), Shard(1), Shard(2), Replicate()):
        d = distribute_tensor(x, mesh, [placement])
        for groups, weights in cases:
            want_norms = wgsef.group_norms(x, groups)
            norms = wgsef.group_norms(d, groups)
            assert norms.placements == (Replicate(),)
            torch.testing.assert_close(norms.to_local(), want_norms, rtol=1e-13, atol=0)
            for k, lam in ((3, 0.4), (1, 2.0), (0, 0.5)):
                want = wgsef.value(x, k, groups, weights)
                got = wgsef.value(d, k, groups, weights)
                torch.testing.assert_close(got.to_local(), want, rtol=1e-12, atol=0)
                want_p = wgsef.prox(x, k, lam, groups, weights)
                got_p = wgsef.prox(d, k, lam, groups, weights)
                assert got_p.placements == d.placements
                torch.testing.assert_close(got_p.full_tensor(), want_p, rtol=0, atol=1e-12)
                torch.testing.assert_close(d.full_tensor(), x, rtol=0, atol=0)  # prox leaves its input alone
                inplace = distribute_tensor(x, mesh, [placement])
                assert wgsef.prox_(inplace, k, lam, groups, weights) is inplace
                torch.testing.assert_close(inplace.full_tensor(), want_p, rtol=0, atol=1e-12)
            # the gradient of the value, placed like x
            leaf = distribute_tensor(x, mesh, [placement]).requires_grad_()
            wgsef.value(leaf, 3, groups, weights).backward()
            ref = x.clone().requires_grad_()
            wgsef.value(ref, 3, groups, weights).backward()
            assert leaf.grad.placements == leaf.placements
            torch.testing.assert_close(leaf.grad.full_tensor(), ref.grad, rtol=1e-12, atol=1e-14)
    # float32: the norms are summed in another order than in one process
    x32 = x.float()
    for placement in (Shard(0), Shard(1)):
        got = wgsef.prox(distribute_tensor(x32, mesh, [placement]), 2, 0.3, "channels").full_tensor()
        torch.testing.assert_close(got, wgsef.prox(x32, 2, 0.3, "channels"), rtol=1e-5, atol=1e-6)
    # N:M: groups of 4 along dim 1 lie inside Shard(0) shards and inside 8-column Shard(1) shards
    w = torch.randn(6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for placement in (Shard(0), Shard(1), Replicate()):
        dw = distribute_tensor(w, mesh, [placement])
        mask = wgsef.nm_mask(dw, 2, 4, dim=1)
        assert mask.placements == dw.placements
        assert torch.equal(mask.full_tensor(), wgsef.nm_mask(w, 2, 4, dim=1))
        leaf = dw.detach().requires_grad_()
        out = wgsef.nm_decay(leaf, 2, 4, 0.25, dim=1, grad_mode="scaled")
        ref = w.clone().requires_grad_()
        want = wgsef.nm_decay(ref, 2, 4, 0.25, dim=1, grad_mode="scaled")
        torch.testing.assert_close(out.full_tensor(), want, rtol=0, atol=0)
        (out * out).sum().backward()
        (want * want).sum().backward()
        torch.testing.assert_close(leaf.grad.full_tensor(), ref.grad, rtol=0, atol=1e-15)
    odd = distribute_tensor(torch.randn(4, 12, dtype=torch.float64), mesh, [Shard(1)])  # shards of 6 columns
    with pytest.raises(ValueError, match="would span shards"):
        wgsef.nm_mask(odd, 2, 4, dim=1)
    _nm_sparsifier_checks(mesh)
    return True


def _nm_sparsifier_checks(mesh):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    def net():
        torch.manual_seed(5)
        return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4)).double()

    x = batch(0, (5, 16))
    schedule = lambda: wgsef.NMSchedule(2, 4, 10, "srste")  # noqa: E731  (hard 2:4 from the first step)
    reference, sharded, fsdp = net(), net(), net()
    ref_sparsifier = wgsef.NMSparsifier(reference, schedule())
    for layer in (sharded[0], sharded[2]):  # tensor-parallel style: rows of each weight on different ranks
        layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Shard(0)]))
    tp = wgsef.NMSparsifier(sharded, schedule())
    for got, want in ((sharded[0].weight, reference[0].weight), (sharded[2].weight, reference[2].weight)):
        assert got.placements == (Shard(0),)
        torch.testing.assert_close(got.full_tensor(), want, rtol=0, atol=0)
    wgsef.NMSparsifier(fsdp, schedule())
    fully_shard(fsdp, mesh=mesh)  # FSDP2 gathers the weight before the parametrization sees it
    torch.testing.assert_close(fsdp(x), reference(x), rtol=0, atol=1e-14)
    tp.export(), ref_sparsifier.export()
    for layer, want in ((sharded[0], reference[0]), (sharded[2], reference[2])):
        assert layer.weight.placements == (Shard(0),)
        torch.testing.assert_close(layer.weight.full_tensor(), want.weight, rtol=0, atol=0)


def test_functional_api_and_nm_on_dtensors():
    run_ranks(2, _functional_worker)


# -- bad input: every rank raises, nothing is written, nobody hangs ------------------


def _sharded_mlp(mesh):
    from torch.distributed.fsdp import fully_shard

    model = mlp()
    for layer in [m for m in model.modules() if isinstance(m, nn.Linear)]:
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _snapshot(model, opt):
    tensors = [p.detach().to_local().clone() for p in model.parameters()]
    tensors += [
        v.to_local().clone() if hasattr(v, "to_local") else v.clone() for s in opt.state.values() for v in s.values()
    ]
    return tensors


def _bad_input_worker(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial

    mesh = init_device_mesh("cpu", (world,))
    partial = DTensor.from_local(torch.ones(4, 3, dtype=torch.float64), mesh, [Partial()])
    for call in (
        lambda: wgsef.prox(partial, 1, 0.5),
        lambda: wgsef.group_norms(partial),
        lambda: wgsef.nm_mask(partial, 1, 3),
    ):
        with pytest.raises(ValueError, match=r"placement .*Partial.* is not supported"):
            call()

    def disagree(group, key, value_on_rank_1, error, match):
        model = _sharded_mlp(mesh)
        opt = wgsef.ProxSGD(groups_for("per_tensor", model), lr=0.1, momentum=0.9)
        train(model, opt, 2, freeze_at=-1)
        before = _snapshot(model, opt)
        if rank == 1:
            opt.param_groups[group][key] = value_on_rank_1
        opt.zero_grad()
        model(batch(9)).square().mean().backward()
        with pytest.raises(error, match=match):
            opt.step()
        after = _snapshot(model, opt)
        assert len(before) == len(after) and all(torch.equal(a, b) for a, b in zip(before, after))

    model = _sharded_mlp(mesh)
    for mode, match in (("fused", "fused: torch's fused SGD kernel"), ("capturable", "capturable: not with DTensor")):
        with pytest.raises(ValueError, match=match):
            wgsef.ProxSGD(groups_for("per_tensor", model), lr=0.1, momentum=0.9, **{mode: True})

    disagree(0, "lam", [0.5, 0.3, 0.9], ValueError, "lam: the ranks disagree")
    disagree(0, "k", [3, 4, 1], ValueError, "k: the ranks disagree")
    disagree(0, "groups", [("heads", 5), "filters", "filters"], ValueError, "groups: the ranks disagree")
    disagree(0, "lr", 0.2, ValueError, "lr: the ranks disagree")
    # one rank's own check fails: it raises its error, the others that it rejected the step
    own = "k: 100 exceeds the number of groups" if rank == 1 else "another rank rejected this step"
    disagree(0, "k", [3, 100, 2], ValueError if rank == 1 else RuntimeError, own)

    # the functional API: ranks that disagree, or one whose own check fails, raise on
    # every rank before any other collective (single-element groups search by passes,
    # whose collectives depend on k: a rank searching alone would wait forever)
    from torch.distributed.tensor import Shard, distribute_tensor

    x = distribute_tensor(torch.randn(40, 30, dtype=torch.float64), mesh, [Shard(0)])
    before = x.full_tensor()
    for call, error, match in (
        (lambda: wgsef.prox_(x, 100 if rank == 0 else 200, 0.5, "elements"), ValueError, "k: the ranks disagree"),
        (lambda: wgsef.prox(x, 3, 0.5 if rank == 0 else 0.6), ValueError, "lam: the ranks disagree"),
        (lambda: wgsef.value(x, 3, "filters" if rank == 0 else "channels"), ValueError, "groups: the ranks disagree"),
        (
            lambda: wgsef.prox_(x, 3 if rank == 0 else -1, 0.5),
            RuntimeError if rank == 0 else ValueError,
            "another rank rejected" if rank == 0 else "k: expected k >= 0",
        ),
    ):
        with pytest.raises(error, match=match):
            call()
    torch.testing.assert_close(x.full_tensor(), before, rtol=0, atol=0)
    return True


def test_bad_input_raises_on_every_rank_and_writes_nothing():
    run_ranks(2, _bad_input_worker)


# -- DDP ---------------------------------------------------------------------------


def _ddp_worker(rank, world):
    from torch.nn.parallel import DistributedDataParallel

    reference, model = mlp(), DistributedDataParallel(mlp())
    for config in ("per_tensor", "shared_elements"):
        ref_opt = wgsef.ProxSGD(groups_for(config, reference), lr=0.1, momentum=0.9)
        opt = wgsef.ProxSGD(groups_for(config, model.module), lr=0.1, momentum=0.9)
        train(reference, ref_opt, 5, freeze_at=2)
        train(model, opt, 5, freeze_at=2)
        compare(model.module, reference, opt, ref_opt)
    return True


def test_ddp_matches_one_process():
    run_ranks(2, _ddp_worker)


# -- checkpoints through torch.distributed.checkpoint --------------------------------


def _state(model, opt):
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    return {"model": model_sd, "optim": optim_sd}


def _load(model, opt, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    sd = _state(model, opt)  # allocates the optimizer state (one step at lr 0), as DCP needs
    dcp.load(sd, checkpoint_id=path)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def _checkpoint_worker(rank, world, before, after):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))

    def fresh():
        model = _sharded_mlp(mesh)
        return model, wgsef.ProxSGD(groups_for("per_tensor", model), lr=0.1, momentum=0.9)

    model, opt = fresh()
    train(model, opt, range(3))
    dcp.save(_state(model, opt), checkpoint_id=before)  # before the freeze
    train(model, opt, range(3, 6), freeze_at=3)
    dcp.save(_state(model, opt), checkpoint_id=after)
    masks = [m.clone() for m in opt.support_masks().values()]
    train(model, opt, range(6, 8))
    final = [full(p) for p in model.parameters()]

    # resume from the frozen checkpoint: continues bitwise
    model, opt = fresh()
    _load(model, opt, after)
    assert opt.is_frozen() and all(torch.equal(a, b) for a, b in zip(opt.support_masks().values(), masks))
    train(model, opt, range(6, 8))
    assert all(torch.equal(full(p), want) for p, want in zip(model.parameters(), final))

    # the checkpoint from before the freeze loads into a frozen optimizer, and
    # training from it repeats the same freeze and steps
    model, opt = fresh()
    train(model, opt, range(2), freeze_at=0)
    _load(model, opt, before)
    assert not opt.is_frozen()
    train(model, opt, range(3, 8), freeze_at=3)
    assert all(torch.equal(full(p), want) for p, want in zip(model.parameters(), final))
    return [m.tolist() for m in masks], [p.tolist() for p in final]


def _load_worker(rank, world, path, masks):
    from torch.distributed.device_mesh import init_device_mesh

    model = _sharded_mlp(init_device_mesh("cpu", (world,)))
    opt = wgsef.ProxSGD(groups_for("per_tensor", model), lr=0.1, momentum=0.9)
    _load(model, opt, path)
    assert [m.tolist() for m in opt.support_masks().values()] == masks
    return True


def test_checkpoint_resume_and_reshard(tmp_path):
    before, after = str(tmp_path / "before"), str(tmp_path / "after")
    results = run_ranks(2, _checkpoint_worker, before, after)
    masks, _ = results[0]
    assert all(r == results[0] for r in results)
    run_ranks(4, _load_worker, after, masks)  # another world size
    model = mlp()  # one process
    opt = wgsef.ProxSGD(groups_for("per_tensor", model), lr=0.1, momentum=0.9)
    _load(model, opt, after)
    assert [m.tolist() for m in opt.support_masks().values()] == masks


# -- ZeroRedundancyOptimizer ---------------------------------------------------------


def _zero_worker(rank, world, configs):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    for config in configs:
        coupled = config == "coupled"
        reference, model, shape, ref_groups, groups = model_pair(config)
        if not coupled:
            ref_groups, groups = groups_for(config, reference), groups_for(config, model)
        ddp = DistributedDataParallel(model)
        ref_opt = wgsef.ProxSGD(ref_groups, lr=0.1, momentum=0.9)
        zero = ZeroRedundancyOptimizer(groups, optimizer_class=wgsef.ProxSGD, lr=0.1, momentum=0.9)

        def check(step):
            fulls = [p.detach() for p in model.parameters()]
            for p, want in zip(fulls, reference.parameters()):
                torch.testing.assert_close(p, want.detach(), rtol=0, atol=1e-12)
            assert_same_on_every_rank(fulls)

        runs = [(reference, ref_opt, ref_opt.freeze_support), (ddp, zero, zero.optim.freeze_support)]
        side_by_side(runs, 6, freeze_at=3, shape=shape, after_step=check)
        owned = zero.optim.support_masks()
        want = ref_opt.support_masks()
        ref_by_name = dict(zip([n for n, _ in reference.named_parameters()], reference.parameters()))
        names = {id(p): n for n, p in model.named_parameters()}
        for p, mask in owned.items():
            assert torch.equal(mask, want[ref_by_name[names[id(p)]]])
        assert str(wgsef.sparsity_report(zero)) == str(wgsef.sparsity_report(ref_opt)), config
    return True


def _zero_adamw_worker(rank, world):
    # any base optimizer: ProxOptimizer over ZeRO, whose step leaves every rank with
    # every param, so each rank runs the same prox on all of them
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    for config in ("per_tensor", "shared_elements"):
        reference, model = mlp(), mlp()
        ref_opt = wgsef.ProxOptimizer(torch.optim.AdamW(groups_for(config, reference), lr=0.05))
        zero = ZeroRedundancyOptimizer(groups_for(config, model), optimizer_class=torch.optim.AdamW, lr=0.05)
        opt = wgsef.ProxOptimizer(zero)
        train(reference, ref_opt, 6, freeze_at=3)
        train(DistributedDataParallel(model), opt, 6, freeze_at=3)
        compare(model, reference, opt, ref_opt)
    return True


def test_zero_redundancy_optimizer_matches_one_process():
    run_ranks(2, _zero_worker, ["per_tensor", "shared_elements", "ids_weights", "coupled"])
    run_ranks(2, _zero_adamw_worker)


# -- cases an adversarial pass found --------------------------------------------------


def _sharded_param(x, mesh, placement):
    from torch.distributed.tensor import distribute_tensor

    p = nn.Parameter(distribute_tensor(x.clone(), mesh, [placement]))
    p.grad = distribute_tensor(torch.full_like(x, 0.1), mesh, [placement])
    return p


def _edge_worker(rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    mesh = init_device_mesh("cpu", (world,))
    gen = torch.Generator().manual_seed(11)
    # id groups outnumbering a shard's elements (rows 3 + 2 of 4: 12 and 8 elements, 10 groups)
    x = torch.randn(5, 4, dtype=torch.float64, generator=gen)
    ids = torch.arange(20).reshape(5, 4) % 10
    d = distribute_tensor(x, mesh, [Shard(0)])
    torch.testing.assert_close(wgsef.group_norms(d, ids).to_local(), wgsef.group_norms(x, ids), rtol=1e-13, atol=0)
    torch.testing.assert_close(wgsef.prox(d, 3, 0.4, ids).full_tensor(), wgsef.prox(x, 3, 0.4, ids), rtol=0, atol=1e-12)
    # group ids, weights and lam given as DTensors are gathered
    lam = distribute_tensor(torch.tensor(0.4, dtype=torch.float64), mesh, [Replicate()])
    got = wgsef.prox(d, 3, lam, distribute_tensor(ids, mesh, [Shard(0)]))
    torch.testing.assert_close(got.full_tensor(), wgsef.prox(x, 3, 0.4, ids), rtol=0, atol=1e-12)
    plain = nn.Parameter(x.clone())
    plain.grad = torch.full_like(x, 0.1)
    weights = torch.linspace(0.5, 2.0, 10, dtype=torch.float64)
    opts = [
        wgsef.ProxSGD([{"params": [p], "groups": [ids], "weights": [w], "k": 3, "lam": 2.0}], lr=0.1)
        for p, w in (
            (_sharded_param(x, mesh, Shard(0)), distribute_tensor(weights, mesh, [Shard(0)])),
            (plain, weights),
        )
    ]
    for o in opts:
        o.step()
    torch.testing.assert_close(full(opts[0].param_groups[0]["params"][0]), plain.detach(), rtol=0, atol=1e-12)
    # a 32-bit group norm beyond float32's range
    big = torch.zeros(4, 4)
    big[0, :2] = 3e38
    got = wgsef.prox(distribute_tensor(big, mesh, [Shard(1)]), 1, 0.5).full_tensor()
    torch.testing.assert_close(got, wgsef.prox(big, 1, 0.5))
    # regularizer() of a group mixing DTensor and plain params (plain ones add on one rank)
    a = _sharded_param(torch.randn(4, 3, dtype=torch.float64, generator=gen), mesh, Shard(0))
    b = nn.Parameter(torch.randn(5, 3, dtype=torch.float64, generator=gen))
    ref = [nn.Parameter(full(a).clone()), nn.Parameter(b.detach().clone())]
    reg = wgsef.ProxSGD([{"params": [a, b], "k": [2, 2], "lam": 0.5}], lr=0.1).regularizer()
    want = wgsef.ProxSGD([{"params": ref, "k": [2, 2], "lam": 0.5}], lr=0.1).regularizer()
    torch.testing.assert_close(reg.detach(), want.detach(), rtol=1e-12, atol=0)
    # sparsity_report of an FSDP2 model: zero counts over the whole tensors
    model, reference = _sharded_mlp(mesh), mlp()
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters()):
            p.to_local()[::2] = 0
            q.copy_(full(p))
    assert str(wgsef.sparsity_report(model)) == str(wgsef.sparsity_report(reference))

    # ranks that pass different id contents or weights are caught before anything is written
    def differing(key, mine):
        model = _sharded_mlp(mesh)
        groups = groups_for("ids_weights", model)
        groups[0][key] = mine
        opt = wgsef.ProxSGD(groups, lr=0.1, momentum=0.9)
        model(batch(0)).square().mean().backward()
        before = [p.detach().to_local().clone() for p in model.parameters()]
        with pytest.raises(ValueError, match=f"{key}: the ranks disagree"):
            opt.step()
        assert all(torch.equal(p.detach().to_local(), q) for p, q in zip(model.parameters(), before))

    # groups that a shard boundary splits into single elements on every rank, or on
    # some (uneven shards), are not single-element groups: their norms are all-reduced
    for shape, groups, placement in (
        ((3, 2), "filters", Shard(1)),
        ((3, 3), "filters", Shard(1)),
        ((2, 5), "channels", Shard(0)),
        ((2,), "layer", Shard(0)),
    ):
        t = torch.randn(shape, dtype=torch.float64, generator=gen)
        got = wgsef.prox(distribute_tensor(t, mesh, [placement]), 1, 0.3, groups).full_tensor()
        torch.testing.assert_close(got, wgsef.prox(t, 1, 0.3, groups), rtol=0, atol=1e-12)
    # single-element groups search by passes (prox_elements_): large enough for the
    # sampled bracket, with weights, budgets below, near and above the non-zero count
    big = torch.randn(210, 100, dtype=torch.float64, generator=gen)
    big[5] = 0
    element_weights = torch.rand(big.numel(), dtype=torch.float64, generator=gen) + 0.5
    for placement in (Shard(0), Shard(1)):
        d = distribute_tensor(big, mesh, [placement])
        for weights in (None, element_weights):
            for k, lam in ((5000, 0.3), (20800, 1.0), (0, 0.5), (30000, 0.5)):
                want = wgsef.prox(big, k, lam, "elements", weights)
                got = wgsef.prox(d, k, lam, "elements", weights).full_tensor()
                torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # one budget over a sharded and a replicated tensor (counted once) and per-tensor terms
    a0 = torch.randn(120, 90, dtype=torch.float64, generator=gen)
    b0 = torch.randn(40, 50, dtype=torch.float64, generator=gen)
    grads = [torch.randn_like(a0), torch.randn_like(b0)]
    for shared_k, k in ((True, 0.3), (False, [0.2, 0.6])):
        pair = [
            nn.Parameter(distribute_tensor(a0, mesh, [Shard(1)])),
            nn.Parameter(distribute_tensor(b0, mesh, [Replicate()])),
        ]
        ref_pair = [nn.Parameter(a0.clone()), nn.Parameter(b0.clone())]
        opts = [
            wgsef.ProxSGD([{"params": ps, "groups": "elements", "k": k, "lam": 0.5, "shared_k": shared_k}], lr=0.1)
            for ps in (pair, ref_pair)
        ]
        for _ in range(2):
            for ps, o in zip((pair, ref_pair), opts):
                for p, g in zip(ps, grads):
                    p.grad = distribute_tensor(g, mesh, p.placements) if hasattr(p, "placements") else g.clone()
                o.step()
        for p, q in zip(pair, ref_pair):
            torch.testing.assert_close(full(p), q.detach(), rtol=0, atol=1e-12)

    # a replicated param with Partial gradients (tensor parallel): the fused SGD step
    # needs gradients placed like their params, so the step reduces them first
    from torch.distributed.tensor import DTensor, Partial

    w = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    parts = [torch.randn(6, 4, dtype=torch.float64, generator=gen) for _ in range(world)]
    p = nn.Parameter(distribute_tensor(w, mesh, [Replicate()]))
    q = nn.Parameter(w.clone())
    opts = [wgsef.ProxSGD([{"params": [t], "k": 3, "lam": 0.1}], lr=0.1, momentum=0.9) for t in (p, q)]
    for _ in range(3):  # the second step on would take the fused path
        p.grad = DTensor.from_local(parts[rank].clone(), mesh, [Partial()], run_check=False)
        q.grad = sum(parts)
        for o in opts:
            o.step()
    torch.testing.assert_close(full(p), q.detach(), rtol=0, atol=1e-12)

    ids0 = torch.arange(120).reshape(10, 12) % 9
    differing("groups", [ids0 if rank == 0 else ids0.flip(0), "filters"])
    w0 = torch.linspace(0.5, 2.0, 9, dtype=torch.float64)
    differing("weights", [w0 if rank == 0 else w0.flip(0), torch.linspace(1.0, 3.0, 5, dtype=torch.float64)])
    return True


def test_edge_cases_on_dtensors():
    run_ranks(2, _edge_worker)


def _lockstep_worker(rank, world):
    # per-tensor terms of single-element groups: every round of passes, over all
    # terms still searching, is one all_reduce, so their count does not grow with
    # the number of terms; each rank's result is its half of the one-process prox
    gen = torch.Generator().manual_seed(11)
    full = [torch.randn(2 * 12000, dtype=torch.float64, generator=gen) for _ in range(6)]
    weights = [torch.rand(t.numel(), dtype=torch.float64, generator=gen) + 0.5 for t in full]
    lam, lr = torch.tensor(0.4), torch.tensor(1.0)
    group = dist.group.WORLD.group_name

    def run(n):
        xs = [t.chunk(world)[rank].clone() for t in full[:n]]
        ws = [w.chunk(world)[rank] for w in weights[:n]]
        budgets = [2000 + 1500 * i for i in range(n)]
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            wgsef.ops.prox_elements_(xs, ws, [True] * n, budgets, lam, lr, False, [group], rank, world)
        reduces = sum(e.name == "_c10d_functional::all_reduce" for e in prof.events())
        want = [t.clone() for t in full[:n]]
        wgsef.ops.prox_elements_(want, weights[:n], [True] * n, budgets, lam, lr, False, [], 0, 1)
        for x, w in zip(xs, want):
            torch.testing.assert_close(x, w.chunk(world)[rank], rtol=0, atol=1e-12)
        return reduces

    one, six = run(1), run(6)
    assert 3 <= one and six <= one + 3, (one, six)
    return one, six


def test_elementwise_terms_share_their_all_reduces():
    counts = run_ranks(2, _lockstep_worker)
    print("all_reduces for 1 and 6 terms:", counts[0])


def _zero_empty_partition_worker(rank, world):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    for shared in (False, True):
        reference, model = mlp(), mlp()

        def groups(m):  # a one-param group: one rank's partition of it is empty
            weights, _, others = linear_weights(m)
            return [
                {"params": [weights[0]], "k": 4, "lam": 0.5, "shared_k": shared},
                {"params": weights[1:], "k": [3, 2], "lam": 0.5},
                {"params": others, "k": None},
            ]

        ref_opt = wgsef.ProxSGD(groups(reference), lr=0.1, momentum=0.9)
        zero = ZeroRedundancyOptimizer(groups(model), optimizer_class=wgsef.ProxSGD, lr=0.1, momentum=0.9)

        def check(step):
            for p, q in zip(model.parameters(), reference.parameters()):
                torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-12)

        runs = [
            (reference, ref_opt, ref_opt.freeze_support),
            (DistributedDataParallel(model), zero, zero.optim.freeze_support),
        ]
        side_by_side(runs, 5, freeze_at=2, after_step=check)
        assert zero.optim.is_frozen()
    return True


def test_zero_with_an_empty_partition():
    run_ranks(2, _zero_empty_partition_worker)
