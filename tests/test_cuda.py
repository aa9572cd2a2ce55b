"""CUDA tests (``pytest -m cuda``): the three trainers, FSDP2, checkpoints and ``predict.py`` on a GPU.

Every test here carries the ``cuda`` marker and is skipped, with its reason, where
``torch.cuda.is_available()`` is False, so CI on CPU machines stays green; ``bash
benchmarks/gpu_suite.sh`` runs them on a GPU node. What they check:

* gradients of each model family (pretraining MAE, classifier, dense segmenter) on CUDA under
  float32 (TF32 on, as training sets it), bf16 autocast and fp16 autocast + ``GradScaler``,
  against the float32 CPU computation of the same weights, inputs and masks;
* each trainer's CLI (``main_pretrain``, ``main_finetune``, ``downstream_tasks/train.py``) for a
  few steps on CUDA with bf16 and with fp16 + GradScaler, eager and ``--compile``: per-step losses
  (and gradient norms where the log has them) close to a float32 reference run;
* FSDP2 (``fully_shard`` + ``MixedPrecisionPolicy``, NCCL, world size 1 via torchrun) equal to
  plain training;
* a checkpoint written on CUDA resumes in a CPU-only process (``CUDA_VISIBLE_DEVICES=""``) and
  the CPU one resumes on CUDA;
* ``predict.py`` on CUDA equal to CPU within tolerance;
* no host synchronisation in the pretraining hot loop except on log steps
  (``torch.cuda.set_sync_debug_mode("error")`` on the other steps);
* attention runs the SDPA flash kernel under bf16.

Tolerances (relative), from the precision of each mode: bf16 keeps 8 mantissa bits (rounding
2^-9 = 2e-3 per operation), fp16 11 (2.4e-4), TF32 10. Measured with CPU autocast on the same
tiny models (``SPECTRALGPT_TEST_DEVICE=cpu``, see below), the largest errors were: loss 2e-4
(bf16 and fp16); whole gradient 2.5e-2 (bf16) and 7.6e-3 (fp16), both for the dense model, 1e-2
and 1e-3 for the others; trainer losses 1e-3 (bf16) and 2.7e-3 (fp16, which skips its first
update while GradScaler lowers its scale from 2^16). The bounds leave a margin of 2.4x or more
for CUDA's kernels (cuBLAS, cuDNN, flash attention):

================  ============  =====================  ============================
mode              loss          gradient (global L2)   trainer losses, each step
================  ============  =====================  ============================
float32 (TF32)    5e-3          2e-2                   -
bfloat16          2e-2          6e-2                   2e-2
float16           5e-3          2e-2                   1e-2
================  ============  =====================  ============================

Each parameter tensor that carries at least 1 % of the gradient's norm must be within 3x the
global bound. The trainer runs use a learning rate of 1e-6, so that they compare numerics rather
than optimiser trajectories (one AdamW update moves every weight by about ``lr`` whatever the
gradient, so a skipped fp16 update would otherwise shift the later losses by percents).

Pretraining masks come from a generator on the training device (no host sync); CUDA and CPU
generators differ, so the pretraining CLI runs are compared with a float32 run on the same device
(same masks), and the comparison with the float32 CPU computation is the gradient test, which
passes the same noise to both. Classification and dense runs draw nothing on the device (drop
path, the decode head's dropout, mixup and random erasing off) and are compared with the float32
CPU run directly.

``SPECTRALGPT_TEST_DEVICE=cpu pytest -m cuda tests/test_cuda.py`` runs the device-independent
tests on the CPU (autocast bf16/fp16 there; CUDA-only checks are skipped): this is how the test
logic and the tolerances above were checked without a GPU. The torchrun worker for the FSDP2 test
is this file's ``__main__``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the torchrun worker runs this file as a script
    sys.path.insert(0, str(REPO))

import models_mae_spectral  # noqa: E402
import models_vit_tensor  # noqa: E402
from downstream_tasks import models_dense  # noqa: E402
from util.training.optim import OptimStep, create_adamw, pretrain_param_groups  # noqa: E402
from util.training.runtime import setup_backends  # noqa: E402

#: where the "CUDA" tests run: cuda (default), or cpu to check the test logic without a GPU
DEVICE = os.environ.get("SPECTRALGPT_TEST_DEVICE", "cuda")
ON_CUDA = torch.device(DEVICE).type == "cuda"
NO_GPU = ON_CUDA and not torch.cuda.is_available()

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        NO_GPU,
        reason="needs a CUDA device (torch.cuda.is_available() is False); on a GPU node run "
        "pytest -m cuda or bash benchmarks/gpu_suite.sh",
    ),
]
cuda_only = pytest.mark.skipif(not ON_CUDA, reason="CUDA-only check (SPECTRALGPT_TEST_DEVICE=cpu)")

TOL = {  # see the module docstring
    "float32": {"loss": 5e-3, "grad": 2e-2},
    "bfloat16": {"loss": 2e-2, "grad": 6e-2, "trainer": 2e-2},
    "float16": {"loss": 5e-3, "grad": 2e-2, "trainer": 1e-2},
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TINY_MAE = "mae_vit_tiny_patch8_96"
TINY_VIT = "vit_tiny_patch8_96"
TINY_SEG = "segmenter_vit_tiny_patch8_128"
DENSE_KW = {"reduction": "mean", "channels": 256}  # see _family
#: small enough that one update moves the loss by well under the tolerance: fp16 runs skip their
#: first update(s) while GradScaler finds its scale (2^16 overflows), float32 runs do not
TRAINER_LR = 1e-6
MODES = [
    pytest.param(dtype, compile, id=f"{dtype}-{'compile' if compile else 'eager'}")
    for dtype in ("bfloat16", "float16")
    for compile in (False, True)
]


def _device() -> torch.device:
    return torch.device(DEVICE)


def _rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    """``|a - b| / |b|`` (L2 norms for tensors)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# ------------------------------------------------------------------------------------------------
# gradients of each model family against float32 on the CPU
# ------------------------------------------------------------------------------------------------
def _family(name: str) -> tuple[torch.nn.Module, tuple, callable]:
    """A tiny model of ``name``'s family, its CPU inputs, and ``loss(model, *inputs)``."""
    g = torch.Generator().manual_seed(1)
    if name == "pretrain":
        model = models_mae_spectral.create_model(TINY_MAE, img_size=32)
        x = torch.rand(4, 12, 32, 32, generator=g)
        noise = torch.rand(4, model.num_patches, generator=g)
        return model, (x, noise), lambda m, x, n: m(x, mask_ratio=0.75, noise=n)[0]
    if name == "classify":
        model = models_vit_tensor.create_model(
            TINY_VIT, img_size=32, num_classes=10, drop_path_rate=0.0
        )
        with torch.no_grad():  # the head starts near zero (std 2e-5): give the loss a slope
            model.head.weight.normal_(0.0, 0.02, generator=g)
        x = torch.rand(4, 12, 32, 32, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        return model, (x, y), lambda m, x, y: torch.nn.functional.cross_entropy(m(x).float(), y)
    # decoder width 256 (base's; tiny's 64 leaves 2 channels per GroupNorm group, and on the
    # 1 x 1 pyramid-pooling branch the gradient of normalising 2 numbers is rounding noise in
    # any low precision: bf16 on CPU gave a relative gradient error of 1.5, vs 0.025 at 256)
    model = models_dense.create_model(
        TINY_SEG, img_size=32, num_classes=5, drop_path_rate=0.0, **DENSE_KW
    )
    for m in model.modules():  # the head's dropout draws on the device's generator: off
        if isinstance(m, torch.nn.modules.dropout._DropoutNd):
            m.p = 0.0
    x = torch.rand(2, 12, 32, 32, generator=g)
    y = torch.randint(0, 5, (2, 32, 32), generator=g)
    return model, (x, y), lambda m, x, y: torch.nn.functional.cross_entropy(m(x).float(), y)


def _loss_and_grads(model, inputs, loss_fn, device, dtype):
    """Loss and gradients (float32, CPU) of one forward/backward as the trainers run it:
    autocast to ``dtype``; for float16 the loss is scaled by ``GradScaler`` and unscaled, the
    scale halved (``update()``) while the scaled gradients overflow, as training skips steps."""
    model = model.to(device).train()
    inputs = [t.to(device) for t in inputs]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # unscale_ needs an optimiser
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = loss_fn(model, *inputs)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = {n: p.grad.detach().float().cpu() for n, p in model.named_parameters()}
        if not scaler.is_enabled() or all(torch.isfinite(g).all() for g in grads.values()):
            break
        scaler.update()  # found inf: half the scale, as a skipped training step does
    return float(loss.detach()), grads


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("family", ["pretrain", "classify", "dense"])
def test_loss_and_gradients_close_to_float32_cpu(family, dtype):
    torch.manual_seed(0)
    model, inputs, loss_fn = _family(family)
    ref_loss, ref = _loss_and_grads(copy.deepcopy(model), inputs, loss_fn, torch.device("cpu"),
                                    torch.float32)  # fmt: skip
    setup_backends(_device())  # TF32 matmuls and cuDNN autotuning, as the trainers set them
    loss, got = _loss_and_grads(model, inputs, loss_fn, _device(), DTYPES[dtype])
    assert all(torch.isfinite(g).all() for g in got.values()), "non-finite gradient"
    assert _rel(loss, ref_loss) < TOL[dtype]["loss"], (loss, ref_loss)
    flat, flat_ref = (torch.cat([d[k].flatten() for k in ref]) for d in (got, ref))
    assert _rel(flat, flat_ref) < TOL[dtype]["grad"]
    for k in ref:  # no tensor is wrong on its own (those that carry a share of the gradient)
        if ref[k].norm() > 1e-2 * flat_ref.norm():
            assert _rel(got[k], ref[k]) < 3 * TOL[dtype]["grad"], k


# ------------------------------------------------------------------------------------------------
# the trainers' CLIs
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic fMoW-Sentinel, EuroSAT and SegMunich in their on-disk layouts (GeoTIFFs)."""
    pytest.importorskip("rasterio", reason="the synthetic data sets are GeoTIFFs (rasterio)")
    from util.data.synthetic import generate

    root = tmp_path_factory.mktemp("cuda_data")
    data = {
        "fmow": generate("fmow_sentinel", root / "fmow", num=24, size=24, seed=0),
        "eurosat": generate("eurosat", root / "eurosat", num=30, size=16, seed=0),
        "segmunich": generate("segmunich", root / "seg", num=24, size=32, seed=0),
    }
    start = _run_cli(
        "finetune_start", _argv("finetune_start", data, root / "ft0", "cpu", "float32", False)
    )
    data["finetune_start"] = start / "checkpoint-last.pth"
    return data


def _argv(kind: str, data: dict, out: Path, device: str, dtype: str, compile: bool) -> list[str]:
    extra = f"--device {device} --dtype {dtype} --output_dir {out} --num_workers 0 --seed 3 "
    extra += "--compile" if compile else ""
    if kind == "pretrain":  # 24 images, batch 4: 6 steps, one log line each
        cmd = (
            f"--model {TINY_MAE} --input_size 16 --dataset_type sentinel --train_path "
            f"{data['fmow']} --batch_size 4 --epochs 1 --lr {TRAINER_LR} --mask_ratio 0.75 --print_freq 1 "
            "--no_augment --warmup_epochs 0 --vis_every 0 --clip_grad 1.0"
        )
    elif kind.startswith("finetune"):
        e = data["eurosat"]
        # the head starts at ~0 (std 2e-5, as MAE's), which makes every loss ln(10) whatever the
        # precision: the compared runs continue (--resume) a short run that trained it (lr 1e-2)
        start = kind == "finetune_start"
        cmd = (
            f"--model {TINY_VIT} --input_size 16 --batch_size 4 --print_freq 1 "
            f"--dataset_type euro_sat --max_steps_per_epoch 5 --train_path "
            f"{e / 'train_euro_result.txt'} --test_path {e / 'val_euro_result.txt'} --drop_path 0 "
            "--mixup 0 --cutmix 0 --reprob 0 --warmup_epochs 0 --native_size 0 "
            + (
                "--epochs 1 --lr 1e-2"
                if start
                else f"--epochs 2 --lr {TRAINER_LR} --resume {data['finetune_start']}"
            )
        )
    else:
        cmd = (
            f"--task segmunich --data_root {data['segmunich']} --model {TINY_SEG} "
            "--model_kwargs reduction=mean channels=256 dropout=0 --input_size 32 --batch_size 4 --epochs 1 "
            "--max_steps_per_epoch 5 --print_freq 1 --drop_path 0 --warmup_epochs 0 --vis_every 0 "
            f"--no_test --lr {TRAINER_LR}"
        )
    return shlex.split(f"{cmd} {extra}")


def _run_cli(kind: str, argv: list[str]) -> Path:
    if kind == "pretrain":
        import main_pretrain

        main_pretrain.cli(argv)
    elif kind.startswith("finetune"):
        import main_finetune

        main_finetune.cli(argv)
    else:
        from downstream_tasks import train as dense_train

        dense_train.cli(argv)
    return Path(argv[argv.index("--output_dir") + 1])


def _steps(out: Path) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("type") == "step"]


@pytest.fixture(scope="module")
def references(data, tmp_path_factory):
    """float32 reference runs: pretraining on the test device (its masks), the others on CPU."""
    root = tmp_path_factory.mktemp("cuda_ref")
    refs = {}
    for kind, device in (("pretrain", DEVICE), ("finetune", "cpu"), ("dense", "cpu")):
        out = _run_cli(kind, _argv(kind, data, root / kind, device, "float32", False))
        refs[kind] = _steps(out)
    return refs


@pytest.mark.parametrize("dtype, compile", MODES)
@pytest.mark.parametrize("kind", ["pretrain", "finetune", "dense"])
def test_trainer_cli_close_to_float32(kind, dtype, compile, data, references, tmp_path):
    out = _run_cli(kind, _argv(kind, data, tmp_path / "run", DEVICE, dtype, compile))
    got, ref = _steps(out), references[kind]
    assert [r["step"] for r in got] == [r["step"] for r in ref] and len(got) >= 4
    tol = TOL[dtype]["trainer"]
    for a, b in zip(got, ref):
        assert math.isfinite(a["loss"]) and _rel(a["loss"], b["loss"]) < tol, (a, b)
    if "grad_norm" in ref[0]:  # pretraining logs the gradient norm of each update
        norms = [float(r["grad_norm"]) for r in got]  # JSON "NaN"/"Infinity": skipped update
        skipped = sum(not math.isfinite(n) for n in norms)
        assert skipped <= (3 if dtype == "float16" else 0), norms
        for n, b in zip(norms, ref):
            if math.isfinite(n):
                assert _rel(n, b["grad_norm"]) < 2 * TOL[dtype]["grad"], (n, b)
    args = json.loads((out / "args.json").read_text())
    assert args["dtype"] == dtype and args["compile"] == compile


# ------------------------------------------------------------------------------------------------
# FSDP2 on one GPU (torchrun, world size 1) == plain training
# ------------------------------------------------------------------------------------------------
def fsdp_worker(out: Path, dtype_name: str) -> None:
    """torchrun worker: 4 steps of the tiny MAE plainly and under FSDP2 (``fully_shard`` of every
    block and the root, ``MixedPrecisionPolicy`` for bf16 on CUDA); losses, gradient norms and
    final weights of both, saved to ``out``."""
    from util.training.checkpoint import model_state_dict
    from util.training.runtime import wrap_model

    device = _device()
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        device_id=device if device.type == "cuda" else None,
    )
    dtype = DTYPES[dtype_name]
    results = {}
    for strategy in ("plain", "fsdp"):
        torch.manual_seed(0)
        model = models_mae_spectral.create_model(TINY_MAE, img_size=16).to(device)
        net = wrap_model(
            model, distributed=strategy == "fsdp", device=device, strategy="fsdp",
            param_dtype=dtype,
        )  # fmt: skip
        opt = create_adamw(pretrain_param_groups(model, 0.05), lr=1e-3)
        step = OptimStep(net, opt, device_type=device.type, dtype=dtype, clip_grad=1.0)
        g = torch.Generator().manual_seed(1)
        losses, norms = [], []
        for it in range(4):
            x = torch.rand(4, 12, 16, 16, generator=g).to(device)
            noise = torch.rand(4, model.num_patches, generator=g).to(device)
            res = step(
                it, lambda x=x, noise=noise, net=net: net(x, mask_ratio=0.75, noise=noise)[0]
            )
            losses.append(float(res.loss))
            norms.append(float(res.grad_norm))
        state = {k: v.detach().float().cpu() for k, v in model_state_dict(model).items()}
        results[strategy] = {"losses": losses, "norms": norms, "state": state}
        results[strategy]["sharded"] = any(hasattr(p, "device_mesh") for p in model.parameters())
    torch.save(results, out)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_fsdp2_one_gpu_equals_plain_training(dtype, tmp_path):
    from util.training.runtime import fsdp_available

    if not fsdp_available():
        pytest.skip("FSDP2 (torch.distributed.fsdp.fully_shard) needs torch >= 2.6")
    out = tmp_path / "fsdp.pt"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        __file__, "fsdp", str(out), dtype,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    res = torch.load(out, weights_only=True)
    plain, fsdp = res["plain"], res["fsdp"]
    assert fsdp["sharded"] and not plain["sharded"]
    if dtype == "float32":  # the same arithmetic: equal up to kernel choice
        assert fsdp["losses"] == pytest.approx(plain["losses"], rel=1e-5)
        assert fsdp["norms"] == pytest.approx(plain["norms"], rel=1e-4)
        for k, v in plain["state"].items():
            torch.testing.assert_close(fsdp["state"][k], v, rtol=0, atol=1e-5)
    else:  # FSDP computes with bf16 parameters (elementwise ops too), autocast with fp32 ones
        assert fsdp["losses"] == pytest.approx(plain["losses"], rel=TOL[dtype]["loss"])
        assert fsdp["norms"] == pytest.approx(plain["norms"], rel=TOL[dtype]["grad"])


# ------------------------------------------------------------------------------------------------
# checkpoints: CUDA -> CPU-only process -> CUDA
# ------------------------------------------------------------------------------------------------
def test_checkpoint_from_cuda_resumes_on_cpu_and_back(data, tmp_path):
    import main_pretrain
    from util.training.checkpoint import load_checkpoint_file

    def argv(out, epochs, device, dtype, resume=None):
        a = _argv("pretrain", data, out, device, dtype, False)
        a[a.index("--epochs") + 1] = str(epochs)
        return a + (["--resume", str(resume)] if resume else [])

    main_pretrain.cli(argv(tmp_path / "gpu", 1, DEVICE, "bfloat16"))
    first = tmp_path / "gpu" / "checkpoint-0.pth"
    # a process that sees no GPU at all continues the run on the CPU
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    cpu_argv = argv(tmp_path / "cpu", 2, "cpu", "float32", first)
    proc = subprocess.run(
        [sys.executable, "main_pretrain.py", *cpu_argv], cwd=REPO, env=env, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    second = tmp_path / "cpu" / "checkpoint-1.pth"
    # ... and back on the GPU
    main_pretrain.cli(argv(tmp_path / "back", 3, DEVICE, "bfloat16", second))
    a, b, c = (
        load_checkpoint_file(p) for p in (first, second, tmp_path / "back" / "checkpoint-2.pth")
    )
    assert (a["epoch"], b["epoch"], c["epoch"]) == (0, 1, 2)
    assert a["global_step"] < b["global_step"] < c["global_step"]
    for k in a["model"]:
        assert torch.isfinite(c["model"][k]).all(), k
    moved = sum(
        float((b["model"][k].float() - a["model"][k].float()).abs().sum()) for k in a["model"]
    )
    assert moved > 0  # the CPU epoch trained the CUDA weights


# ------------------------------------------------------------------------------------------------
# predict.py: CUDA == CPU
# ------------------------------------------------------------------------------------------------
def test_predict_on_cuda_equals_cpu(data, tmp_path):
    import numpy as np
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    import predict
    from downstream_tasks import train as dense_train
    from util.data.sentinel2 import L1C_BANDS
    from util.data.synthetic import COVERS, render_scene
    from util.inference.scene import write_stack

    out = tmp_path / "seg"
    dense_train.cli(_argv("dense", data, out, "cpu", "float32", False))
    ckpt = out / "checkpoint-best.pth"
    rng = np.random.default_rng(0)
    _, refl, _ = render_scene(rng, 80, 96, list(COVERS)[:5])
    dn = np.clip(np.rint(refl * 10000), 1, 65535).astype(np.uint16)
    scene = write_stack(tmp_path / "scene.tif", dn, L1C_BANDS, CRS.from_epsg(32632),
                        Affine(10, 0, 6e5, 0, -10, 5.1e6))  # fmt: skip

    def run(device, dtype):
        path = tmp_path / f"{device}-{dtype}.tif"
        predict.cli(
            ["--checkpoint", str(ckpt), "--input", str(scene), "--output", str(path),
             "--probabilities", str(path.with_suffix(".p.tif")), "--device", device,
             "--dtype", dtype, "--no_progress"]
        )  # fmt: skip
        with rasterio.open(path) as a, rasterio.open(path.with_suffix(".p.tif")) as p:
            return a.read(1), p.read().astype(np.float32)

    cls_ref, p_ref = run("cpu", "float32")
    for dtype, atol, agree in (("float32", 2e-3, 0.999), ("bfloat16", 3e-2, 0.98)):
        cls, p = run(DEVICE, dtype)
        np.testing.assert_allclose(p, p_ref, atol=atol, rtol=0)
        assert (cls == cls_ref).mean() >= agree, dtype


# ------------------------------------------------------------------------------------------------
# the pretraining hot loop does not wait for the GPU
# ------------------------------------------------------------------------------------------------
class _SyncGuard:
    """Yields the batches; host synchronisations raise except on the engine's log steps
    (``it % print_freq == 0`` and the last one)."""

    def __init__(self, batches: list, print_freq: int) -> None:
        self.batches, self.print_freq = batches, print_freq
        self.guarded = 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        try:
            for it, batch in enumerate(self.batches):
                log_step = it % self.print_freq == 0 or it + 1 == len(self.batches)
                self.guarded += not log_step
                torch.cuda.set_sync_debug_mode("default" if log_step else "error")
                yield batch
        finally:
            torch.cuda.set_sync_debug_mode("default")


@cuda_only
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_no_host_sync_in_the_pretraining_hot_loop(dtype):
    from timm.scheduler import CosineLRScheduler

    from engine_pretrain import train_one_epoch

    device = _device()
    setup_backends(device)
    torch.manual_seed(0)
    model = models_mae_spectral.create_model(TINY_MAE, img_size=32).to(device)
    opt = create_adamw(pretrain_param_groups(model, 0.05), lr=1e-4)
    sched = CosineLRScheduler(
        opt, t_initial=100, warmup_t=2, warmup_lr_init=1e-6, t_in_epochs=False
    )
    step = OptimStep(model, opt, sched, device_type="cuda", dtype=DTYPES[dtype], accum_iter=2,
                     clip_grad=1.0)  # fmt: skip
    # pinned host batches, as the DataLoader's pin_memory gives them: the copy must not wait
    batches = [{"image": torch.rand(8, 12, 32, 32).pin_memory()} for _ in range(10)]
    common = dict(device=device, mask_ratio=0.75, print_freq=5)
    train_one_epoch(model, batches[:4], step, epoch=0, **common)  # warm-up: lazy inits
    guard = _SyncGuard(batches, print_freq=5)
    stats = train_one_epoch(model, guard, step, epoch=1, **common)
    assert guard.guarded == 7 and math.isfinite(stats["loss"])  # steps 1-4 and 6-8


# ------------------------------------------------------------------------------------------------
# SDPA flash attention
# ------------------------------------------------------------------------------------------------
def test_attention_runs_the_sdpa_flash_kernel():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.profiler import ProfilerActivity, profile

    device = _device()
    model = models_mae_spectral.create_model(TINY_MAE, img_size=32).to(device)
    x = torch.rand(4, 12, 32, 32, device=device)
    with (
        sdpa_kernel([SDPBackend.FLASH_ATTENTION]),
        profile(activities=[ProfilerActivity.CPU]) as prof,
    ):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _, _ = model(x, mask_ratio=0.75)
        loss.backward()
    names = {e.name for e in prof.events()}
    assert any("_scaled_dot_product_flash_attention" in n for n in names), sorted(names)[:50]
    assert torch.isfinite(loss)


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "fsdp":
    fsdp_worker(Path(sys.argv[2]), sys.argv[3])
