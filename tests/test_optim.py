"""Tests for util/training/optim.py and util/training/args.py: lr rule, weight-decay groups, schedule, OptimStep."""

import argparse
import copy
import math
import shlex

import pytest
import torch
import torch.distributed as dist
from torch import nn

from util.training import args as uargs
from util.training.optim import (
    NonFiniteLossError,
    OptimStep,
    build_scheduler,
    create_adamw,
    effective_lr,
    pretrain_param_groups,
)


def reference_lr(
    k: int, base_lr: float, min_lr: float, warmup_epochs: float, epochs: int, steps_per_epoch: int
) -> float:
    """The paper's per-iteration formula (spec §6.1) at update ``k`` (fractional epoch k/steps)."""
    e = k / steps_per_epoch
    if e < warmup_epochs:
        return base_lr * e / warmup_epochs
    return min_lr + (base_lr - min_lr) * 0.5 * (
        1.0 + math.cos(math.pi * (e - warmup_epochs) / (epochs - warmup_epochs))
    )


class StandIn(nn.Module):
    """Tiny module with the parameter kinds of the MAE (pos tables, mask token, linear, norm)."""

    def __init__(self, dim: int = 8):
        super().__init__()
        self.pos_embed_spatial = nn.Parameter(torch.randn(1, 4, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def no_weight_decay(self):
        return {"pos_embed_spatial"}

    def forward(self, x):
        h = self.norm(torch.relu(self.fc(x + self.pos_embed_spatial.mean(1)) + self.mask_token[0]))
        return self.head(h).squeeze(-1)


def _ns(**kw):
    base = dict(
        batch_size=16,
        accum_iter=1,
        world_size=1,
        lr=None,
        blr=1e-3,
        epochs=5,
        warmup_epochs=2,
        min_lr=0.0,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_effective_lr_paper_numbers():
    # README stage 1: 16 x 32 x 8 GPUs = 4096, blr 2e-4 -> 3.2e-3 (spec §6.4)
    a = _ns(batch_size=16, accum_iter=32, world_size=8, blr=2e-4)
    assert effective_lr(a) == pytest.approx(0.0032)
    assert a.lr == pytest.approx(0.0032)
    assert effective_lr(_ns(lr=0.5)) == 0.5


def test_pretrain_param_groups_follow_the_paper_rule():
    m = StandIn()
    names = {id(p): n for n, p in m.named_parameters()}
    groups = pretrain_param_groups(m, 0.05)
    by_wd = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert by_wd[0.05] == {"pos_embed_spatial", "mask_token", "fc.weight", "head.weight"}
    assert by_wd[0.0] == {"fc.bias", "norm.weight", "norm.bias", "head.bias"}
    groups = pretrain_param_groups(m, 0.05, skip_list=m.no_weight_decay())
    by_wd = {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}
    assert "pos_embed_spatial" in by_wd[0.0]


def test_create_adamw_is_fused_on_cpu_with_paper_betas():
    opt = create_adamw(pretrain_param_groups(StandIn(), 0.05), lr=1e-3)
    assert opt.defaults["fused"] is True
    assert opt.defaults["betas"] == (0.9, 0.95)


@pytest.mark.parametrize("warmup", [0, 2, 1.5])
def test_scheduler_matches_paper_formula_and_lr_scale(warmup):
    m = StandIn()
    a = _ns(warmup_epochs=warmup, min_lr=1e-6)
    groups = pretrain_param_groups(m, 0.05)
    groups[0]["lr_scale"] = 0.5
    opt = create_adamw(groups, lr=1e-3)
    steps = 8  # warm-up length is a whole number of updates (1.5 epochs x 8 = 12)
    sched = build_scheduler(opt, a, steps)
    for k in range(a.epochs * steps):
        sched.step_update(k)
        want = reference_lr(k, 1e-3, 1e-6, warmup, a.epochs, steps)
        assert opt.param_groups[1]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * want, rel=1e-9, abs=1e-15)


def test_scheduler_rejects_empty_epoch():
    opt = create_adamw(StandIn().parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="smaller than"):
        build_scheduler(opt, _ns(), 0)


def _train(accum, batches, dtype=torch.float32, clip=None):
    torch.manual_seed(0)
    m = StandIn()
    opt = create_adamw(pretrain_param_groups(m, 0.05), lr=1e-2)
    step = OptimStep(m, opt, dtype=dtype, accum_iter=accum, clip_grad=clip)
    outs = []
    for it, (x, y) in enumerate(batches):
        outs.append(step(it, lambda x=x, y=y: ((m(x) - y) ** 2).mean()))
    return m, opt, step, outs


def test_accumulation_equals_large_batch():
    g = torch.Generator().manual_seed(1)
    xs, ys = torch.randn(4, 6, 8, generator=g), torch.randn(4, 6, generator=g)
    full = [(xs[i], ys[i]) for i in range(4)]
    halves = [
        (xs[i][h * 3 : (h + 1) * 3], ys[i][h * 3 : (h + 1) * 3]) for i in range(4) for h in (0, 1)
    ]
    m1, _, s1, o1 = _train(1, full)
    m2, _, s2, o2 = _train(2, halves)
    assert s1.num_updates == s2.num_updates == 4
    assert [o.stepped for o in o2] == [False, True] * 4
    assert o2[0].grad_norm is None and o2[1].grad_norm is not None
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1, p2, rtol=1e-5, atol=1e-6)
    # reported loss is the un-divided, detached micro-batch loss
    assert not o2[0].loss.requires_grad
    torch.manual_seed(0)
    fresh = StandIn()
    want = ((fresh(halves[0][0]) - halves[0][1]) ** 2).mean()
    torch.testing.assert_close(o2[0].loss, want.detach())


def test_grads_cleared_and_clip_reports_preclip_norm():
    torch.manual_seed(0)
    m = StandIn()
    opt = create_adamw(m.parameters(), lr=0.0)
    step = OptimStep(m, opt, clip_grad=1e-3)
    x = torch.randn(5, 8)
    ref = copy.deepcopy(m)
    ((ref(x) - 3) ** 2).mean().backward()
    want = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ref.parameters()]))
    out = step(0, lambda: ((m(x) - 3) ** 2).mean())
    torch.testing.assert_close(out.grad_norm, want)
    assert all(p.grad is None for p in m.parameters())


def test_nonfinite_loss_is_flagged_only_on_check():
    m = StandIn()
    step = OptimStep(m, create_adamw(m.parameters(), lr=1e-3))
    x = torch.randn(3, 8)
    step(0, lambda: m(x).mean())
    step.check_finite("epoch 0, step 0")
    step(1, lambda: m(x).mean() * float("nan"))  # no exception: no host sync in the step
    step(2, lambda: m(x).mean())
    with pytest.raises(NonFiniteLossError, match="between epoch 0, step 0 and epoch 0, step 2"):
        step.check_finite("epoch 0, step 2")


def test_fp16_scaler_only_for_float16_and_state_roundtrip():
    m = StandIn()
    opt = create_adamw(m.parameters(), lr=1e-3)
    assert not OptimStep(m, opt, dtype=torch.bfloat16).scaler.is_enabled()
    assert not OptimStep(m, opt, dtype=torch.float32).scaler.is_enabled()
    s = OptimStep(m, opt, dtype=torch.float32)
    with s.autocast():
        assert m(torch.randn(2, 8)).dtype == torch.float32
    s2 = OptimStep(m, opt, dtype=torch.bfloat16)
    with s2.autocast():
        assert m.fc(torch.randn(2, 8)).dtype == torch.bfloat16
    s.num_updates = 7
    sched = build_scheduler(opt, _ns(), 10)
    s3 = OptimStep(m, opt, sched)
    s3.load_state_dict(s.state_dict())
    assert s3.num_updates == 7
    assert opt.param_groups[0]["lr"] == pytest.approx(reference_lr(7, 1e-3, 0.0, 2, 5, 10))


def test_ddp_no_sync_on_non_final_micro_steps(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        m = nn.parallel.DistributedDataParallel(StandIn())
        entered = []
        orig = m.no_sync

        def spy():
            entered.append(True)
            return orig()

        m.no_sync = spy
        step = OptimStep(m, create_adamw(m.parameters(), lr=1e-3), accum_iter=3)
        x = torch.randn(2, 8)
        for it in range(6):
            step(it, lambda: m(x).mean())
        assert len(entered) == 4 and step.num_updates == 2
    finally:
        dist.destroy_process_group()


def _full_parser():
    p = argparse.ArgumentParser()
    uargs.add_common_args(p)
    return p


def test_shared_args_accept_paper_flags_and_save(tmp_path):
    cmd = (
        "--batch_size 16 --accum_iter 32 --blr 0.0002 --epochs 200 --warmup_epochs 20 --num_workers 16 "
        "--input_size 96 --patch_size 8 --model_type tensor --dataset_type sentinel "
        "--dropped_bands 10 --master_port=29501 --local-rank 0 --no_pin_mem --dtype float16"
    )
    a = _full_parser().parse_args(shlex.split(cmd))
    uargs.validate_common_args(a)
    assert a.master_port == 29501 and a.pin_mem is False and a.dropped_bands == [10]
    assert uargs.resolve_dtype(a.dtype, "cpu") == torch.float16
    assert uargs.resolve_dtype(None, "cpu") == torch.float32
    assert uargs.resolve_dtype(None, "cuda") == torch.bfloat16
    a.device = torch.device("cpu")
    path = uargs.save_args(a, tmp_path)
    assert '"device": "cpu"' in path.read_text()


def test_shared_args_clear_errors():
    p = _full_parser()
    with pytest.raises(ValueError, match="--model_type 'group_c'"):
        uargs.validate_common_args(p.parse_args(["--model_type", "group_c"]))
    with pytest.raises(ValueError, match="--input_size"):
        uargs.validate_common_args(p.parse_args(["--input_size", "30"]))
    with pytest.raises(SystemExit):
        p.parse_args(["--dtype", "float64"])
