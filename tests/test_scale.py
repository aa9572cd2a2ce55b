"""Scaling (issue 12): FSDP2 equivalence and checkpoints, activation checkpointing, regional
compile, and the scaling benchmark, all on CPU with gloo.

One torchrun launch (``tests/_fsdp_worker.py``, module fixture) produces every 2-process FSDP
artefact; the tests compare them with single-process runs of the same global batch.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import main_pretrain
import models_mae_spectral
import models_vit_tensor
from tests._fsdp_worker import classifier_steps, pretrain_argv
from util.training.checkpoint import load_weights_file
from util.training.runtime import check_strategy, fsdp_available, transformer_blocks, wrap_model

REPO = Path(__file__).resolve().parents[1]
TINY = "mae_vit_tiny_patch8_96"
needs_fsdp = pytest.mark.skipif(
    not fsdp_available(),
    reason="FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6",
)


def _close(a, b, atol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


@pytest.fixture(scope="module")
def scratch():
    """A private folder: pytest's numbered temp folders are pruned by concurrent pytest runs of the
    same user, which would pull the data from under a minute-long torchrun job."""
    path = Path(tempfile.mkdtemp(prefix="spectralgpt-test-scale-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def data(scratch):
    from util.data.synthetic import generate

    root = scratch / "data"
    fmow = generate("fmow_sentinel", root / "fmow", num=24, size=24, seed=0)
    eurosat = generate("eurosat", root / "eurosat", num=30, size=16, seed=0)
    # 5 evaluation images: shards of 3 and 2 -> 2 and 1 batches of 2 (uneven collective calls)
    lines = (eurosat / "val_euro_result.txt").read_text().splitlines()
    lines += (eurosat / "train_euro_result.txt").read_text().splitlines()
    (eurosat / "val5.txt").write_text("\n".join(lines[:5]) + "\n")
    return fmow, eurosat


@pytest.fixture(scope="module")
def fsdp_run(data, scratch):
    """The 2-process FSDP runs (pretraining straight + resumed, classifier, finetune)."""
    check_strategy("fsdp")
    out = scratch / "fsdp"
    out.mkdir()
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "tests" / "_fsdp_worker.py"), str(out), str(data[0]), str(data[1]),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _pretrain_one(data, out, extra=""):
    parser = main_pretrain.get_args_parser()
    return main_pretrain.main(parser.parse_args(pretrain_argv(data[0], out, 4, extra)))


@pytest.mark.slow
@needs_fsdp
def test_fsdp_pretraining_matches_one_process(fsdp_run, data, tmp_path):
    """2 FSDP ranks x batch 2 == 1 process x batch 4 (accumulation, clipping, schedule, masks)."""
    one = _pretrain_one(data, tmp_path / "one", "--vis_every 0")
    for epoch in (0, 1):
        a = torch.load(tmp_path / "one" / f"checkpoint-{epoch}.pth", weights_only=True)
        b = torch.load(fsdp_run / "pre" / f"checkpoint-{epoch}.pth", weights_only=True)
        assert a["global_step"] == b["global_step"] > 1
        assert len(b["rng"]) == 2 and b["args"]["strategy"] == "fsdp"
        _close(a["model"], b["model"], atol=2e-5)  # as the DDP test (tests/test_pretrain.py)
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
        for k, state in a["optimizer"]["state"].items():
            _close(state, b["optimizer"]["state"][k], atol=2e-5)
    log = (fsdp_run / "pre" / "log.jsonl").read_text().splitlines()
    ep = [json.loads(s) for s in log if '"epoch"' in s][-1]
    assert ep["loss"] == pytest.approx(one["stats"]["loss"], rel=1e-4)
    assert ep["grad_norm"] == pytest.approx(one["stats"]["grad_norm"], rel=1e-4)  # global norm
    assert (fsdp_run / "pre" / "reconstruction-1.png").is_file()  # collective forward for the PNG


@pytest.mark.slow
@needs_fsdp
def test_fsdp_resume_is_exact(fsdp_run):
    a = torch.load(fsdp_run / "pre" / "checkpoint-1.pth", weights_only=True)
    b = torch.load(fsdp_run / "pre_resumed" / "checkpoint-1.pth", weights_only=True)
    assert not (fsdp_run / "pre_resumed" / "checkpoint-0.pth").exists()
    assert a["global_step"] == b["global_step"]
    _close(a["model"], b["model"], atol=1e-7)
    for k, state in a["optimizer"]["state"].items():
        _close(state, b["optimizer"]["state"][k], atol=1e-7)


@pytest.mark.slow
@needs_fsdp
def test_fsdp_checkpoint_continues_in_one_process(fsdp_run, data, tmp_path):
    """A 2-rank FSDP checkpoint resumes strictly in one process (plain model) and continues to the
    same weights as the FSDP run; the 1-process checkpoint then loads as initial weights too."""
    out = tmp_path / "cont"
    _pretrain_one(data, out, f"--vis_every 0 --resume {fsdp_run / 'pre' / 'checkpoint-0.pth'}")
    a = torch.load(fsdp_run / "pre" / "checkpoint-1.pth", weights_only=True)
    b = torch.load(out / "checkpoint-1.pth", weights_only=True)
    assert a["global_step"] == b["global_step"]
    _close(a["model"], b["model"], atol=2e-5)
    model = models_mae_spectral.create_model(TINY, img_size=16)
    model.load_state_dict(load_weights_file(fsdp_run / "pre" / "checkpoint-1.pth"), strict=True)


@needs_fsdp
def test_fsdp_classifier_matches_one_process(fsdp_run):
    """Classifier, accum 2 + clipping, FSDP with activation checkpointing vs 1 plain process."""
    ref_state, ref_norms = classifier_steps("ddp", grad_checkpointing=False)
    got = torch.load(fsdp_run / "cls.pth", weights_only=True)
    assert got["grad_norms"] == pytest.approx(ref_norms, rel=1e-5)
    assert min(ref_norms) > 0.1  # clipping was active
    _close(ref_state, got["model"], atol=2e-5)


@needs_fsdp
def test_fsdp_finetune_with_uneven_eval_shards(fsdp_run, data):
    """main_finetune --strategy fsdp --grad_checkpointing: trains, evaluates shards of 2 and 1
    batches without hanging, and its best checkpoint loads strictly into a plain classifier."""
    ft = fsdp_run / "ft"
    ev = [json.loads(s) for s in (ft / "log.jsonl").read_text().splitlines() if '"eval"' in s]
    assert ev and "acc1" in ev[-1]
    model = models_vit_tensor.create_model("vit_tiny_patch8_96", img_size=16, num_classes=10)
    model.load_state_dict(load_weights_file(ft / "checkpoint-best.pth"), strict=True)
    last = torch.load(ft / "checkpoint-last.pth", weights_only=True)
    assert last["args"]["strategy"] == "fsdp" and last["args"]["grad_checkpointing"]


# ----------------------------------------------------------------------------------------------
# activation checkpointing, regional compile, wrap_model errors
# ----------------------------------------------------------------------------------------------
def _mae_grads(checkpointing: bool, saved: list | None = None):
    torch.manual_seed(0)
    model = models_mae_spectral.create_model(TINY, img_size=32)
    wrap_model(model, grad_checkpointing=checkpointing)
    g = torch.Generator().manual_seed(1)
    x, noise = torch.rand(2, 12, 32, 32, generator=g), torch.rand(2, 64, generator=g)

    def pack(t):
        if saved is not None:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _, _ = model(x, mask_ratio=0.5, noise=noise)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def test_grad_checkpointing_same_gradients_less_saved_memory():
    """Encoder and decoder checkpointed: same loss and gradients (1e-6); the tensors autograd keeps
    for backward outside the recomputed blocks shrink to a fraction (peak RSS for the base model:
    benchmarks/bench_scale.py, README "Scaling")."""
    plain_saved, ckpt_saved = [], []
    loss_a, grads_a = _mae_grads(False, plain_saved)
    loss_b, grads_b = _mae_grads(True, ckpt_saved)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    _close(grads_a, grads_b, atol=1e-6)
    assert sum(ckpt_saved) < 0.5 * sum(plain_saved), (sum(ckpt_saved), sum(plain_saved))


def test_grad_checkpointing_flag_reaches_encoder_and_decoder():
    model = models_mae_spectral.create_model(TINY, img_size=16)
    assert len(transformer_blocks(model)) == 4 + 2  # encoder + decoder blocks
    wrap_model(model, grad_checkpointing=True)
    assert model.grad_checkpointing
    with pytest.raises(ValueError, match="--grad_checkpointing"):
        wrap_model(torch.nn.Linear(2, 2), grad_checkpointing=True)
    with pytest.raises(ValueError, match="--strategy"):
        wrap_model(model, strategy="zero3")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="CPU inductor needs a C++ compiler")
def test_regional_compile_matches_eager():
    """--compile compiles each block in place: keys unchanged, same loss as eager (1e-5)."""
    torch.manual_seed(0)
    eager = models_mae_spectral.create_model(TINY, img_size=16)
    compiled = models_mae_spectral.create_model(TINY, img_size=16)
    compiled.load_state_dict(eager.state_dict())
    wrap_model(compiled, compile=True)
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x, noise = torch.rand(2, 12, 16, 16), torch.rand(2, 16)
    for _ in range(2):  # the second call runs the cached graphs
        la = eager(x, mask_ratio=0.75, noise=noise)[0]
        lb = compiled(x, mask_ratio=0.75, noise=noise)[0]
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
    lb.backward()
    assert compiled.blocks[0].attn.qkv.weight.grad is not None


# ----------------------------------------------------------------------------------------------
# benchmark
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bench_scale_runs_on_cpu_tiny(capsys):
    """A JSON line per configuration with img/s, memory, TFLOP/s and MFU against the measured CPU
    GEMM peak, and the memory model rows (DDP vs FSDP on 8 GPUs, with/without checkpointing)."""
    import benchmarks.bench_scale as bench

    bench.main(
        [
            "--model", TINY, "--input_size", "16", "--batch_size", "2", "--steps", "2",
            "--warmup", "1", "--grad_checkpointing", "on", "--probe_size", "256",
            "--memory_model", "--mm_sizes", "tiny", "--mm_input_size", "32", "--device", "cpu",
        ]
    )  # fmt: skip
    stdout = capsys.readouterr().out
    rows = [json.loads(s) for s in stdout.splitlines() if s.startswith("{")]
    (run,) = [r for r in rows if r["kind"] == "run"]
    assert run["grad_checkpointing"] and run["batch_size"] == 2 and run["strategy"] == "single"
    assert run["img_per_s"] > 0 and run["peak_mem_gib"] > 0 and run["tflops"] > 0
    assert 0 < run["mfu"] < 1.5 and run["peak_source"] == "cpu gemm probe"
    assert run["predicted_gib"] > 0  # the memory model's figure for this run (README: vs measured)
    mm = {(r["strategy"], r["grad_checkpointing"]): r for r in rows if r["kind"] == "memory_model"}
    assert set(mm) == {(s, c) for s in ("ddp", "fsdp") for c in (False, True)}
    ddp, fsdp = mm[("ddp", False)], mm[("fsdp", False)]
    n = sum(p.numel() for p in models_mae_spectral.create_model(TINY, img_size=32).parameters())
    assert ddp["n_params_m"] == pytest.approx(n / 1e6)
    # parameters, gradients and AdamW state (16 bytes per parameter) are divided by 8 under FSDP
    assert ddp["states_gib"] == pytest.approx(16 * n / 2**30)
    assert fsdp["states_gib"] == pytest.approx(ddp["states_gib"] / 8)
    assert mm[("ddp", True)]["act_per_img_mib"] < 0.5 * ddp["act_per_img_mib"]
