"""Tests for util/training/logger.py and the pretraining pipeline (main_pretrain.py, engine_pretrain.py)."""

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

import engine_pretrain
import main_pretrain
import models_mae_spectral
from engine_pretrain import train_one_epoch
from evaluation.reconstruction import save_reconstruction
from util.training import args as uargs
from util.training.logger import TrainLogger, measure_flops, mfu, peak_flops
from util.training.optim import OptimStep, create_adamw, effective_lr, pretrain_param_groups


def test_logger_writes_jsonl_and_tensorboard(tmp_path):
    log = TrainLogger(tmp_path, enabled=True)
    log.log_step(0, 5, {"loss": 1.5, "lr": 1e-3, "mfu": None})
    log.log_epoch(0, {"loss": 1.25})
    log.close()
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "step" and lines[0]["loss"] == 1.5 and lines[0]["step"] == 5
    assert lines[1]["type"] == "epoch" and lines[1]["loss"] == 1.25
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    # other ranks write nothing
    quiet = TrainLogger(tmp_path / "rank1", enabled=False)
    quiet.log_epoch(0, {"loss": 1.0})
    assert not (tmp_path / "rank1").exists()
    assert list(quiet.progress([1, 2])) == [1, 2]


def test_wandb_missing_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match="--wandb myproj needs the wandb package"):
        TrainLogger(tmp_path, wandb_project="myproj", enabled=True)


@pytest.mark.parametrize(
    "name, dtype, tflops",
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.4),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
        ("NVIDIA H200", torch.float16, 989.4),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA L4", torch.bfloat16, 121.0),
        ("Some Future GPU", torch.bfloat16, None),
    ],
)
def test_peak_flops_from_device_name(monkeypatch, name, dtype, tflops):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    got = peak_flops("cuda", dtype)
    assert got == (None if tflops is None else pytest.approx(tflops * 1e12))


def test_flop_count_and_mfu():
    lin = nn.Linear(16, 32, bias=False)
    x = torch.randn(4, 16)
    assert measure_flops(lambda: lin(x)) == 2 * 4 * 16 * 32
    assert (
        measure_flops(lambda: lin(x).sum().backward()) == 2 * 2 * 4 * 16 * 32
    )  # forward + weight gradient (x needs no grad)
    assert peak_flops("cpu") is None
    assert mfu(1e12, 2.0, None) is None
    assert mfu(1e12, 2.0, 4e12) == pytest.approx(0.5)


# ------------------------------------------------------------------------------------------------
# pretraining pipeline
# ------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
TINY = "mae_vit_tiny_patch8_96"


@pytest.fixture(scope="session")
def fmow_root(tmp_path_factory):
    """Synthetic fMoW-Sentinel in its official layout (13-band GeoTIFFs + CSV index)."""
    from util.data.synthetic import generate

    return generate("fmow_sentinel", tmp_path_factory.mktemp("fmow"), num=24, size=24, seed=0)


def _args(out, root, extra=""):
    parser = main_pretrain.get_args_parser()
    cmd = (
        f"--model {TINY} --input_size 16 --dataset_type sentinel --dropped_bands 10 "
        f"--train_path {root} --output_dir {out} --batch_size 4 --epochs 1 --num_workers 0 "
        f"--device cpu --blr 1e-3 --mask_ratio 0.75 --print_freq 2 {extra}"
    )
    return parser.parse_args(shlex.split(cmd))


def _tensors_equal(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def test_main_smoke_writes_checkpoint_log_and_png(tmp_path, fmow_root):
    # the paper's flags (spec §6.4) are accepted as written, apart from the data path
    res = main_pretrain.main(
        _args(
            tmp_path,
            fmow_root,
            "--model_type tensor --patch_size 8 --master_port=29501 --warmup_epochs 1",
        )
    )
    assert res["checkpoint"] == tmp_path / "checkpoint-0.pth"
    assert (tmp_path / "checkpoint-last.pth").is_file() and (tmp_path / "args.json").is_file()
    assert res["reconstruction"].is_file() and res["reconstruction"].suffix == ".png"
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    assert ckpt["data"]["normalization"] == "minmax" and ckpt["data"]["input_size"] == 16
    assert ckpt["data"]["bands"][8] == "B8A" and "B10" not in ckpt["data"]["bands"]
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == res["stats"]["steps"] > 0
    records = [json.loads(s) for s in res["log"].read_text().splitlines()]
    epoch = [r for r in records if r["type"] == "epoch"][-1]
    for key in ("loss", "loss_masked", "loss_spectral", "lr", "grad_norm", "img_per_s"):
        assert epoch[key] is not None, key
    assert epoch["loss"] == pytest.approx(epoch["loss_masked"] + epoch["loss_spectral"], rel=1e-5)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = models_mae_spectral.create_model(TINY, img_size=16)
    opt = create_adamw(pretrain_param_groups(model, 0.05), lr=1e-3)
    step = OptimStep(model, opt)
    x = torch.rand(2, 12, 16, 16)
    losses = [
        train_one_epoch(
            model, [{"image": x}] * 10, step, epoch=e, device=torch.device("cpu"), mask_ratio=0.75
        )["loss"]
        for e in range(5)
    ]
    assert step.num_updates == 50
    assert losses[-1] < 0.5 * losses[0], losses


def test_exact_resume_matches_uninterrupted_run(tmp_path, fmow_root):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main_pretrain.main(
        _args(
            straight,
            fmow_root,
            "--epochs 2 --warmup_epochs 1 --accum_iter 2 --batch_size 2 --save_every 1",
        )
    )
    # "stop" after epoch 0 = continue from the checkpoint written then, in a fresh run
    main_pretrain.main(
        _args(
            resumed,
            fmow_root,
            f"--epochs 2 --warmup_epochs 1 --accum_iter 2 --batch_size 2 --resume {straight / 'checkpoint-0.pth'}",
        )
    )
    assert not (resumed / "checkpoint-0.pth").exists()
    a = torch.load(straight / "checkpoint-1.pth", weights_only=True)
    b = torch.load(resumed / "checkpoint-1.pth", weights_only=True)
    assert a["global_step"] == b["global_step"]
    _tensors_equal(a["model"], b["model"], atol=1e-7)
    for k, state in a["optimizer"]["state"].items():
        _tensors_equal(state, b["optimizer"]["state"][k], atol=1e-7)
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]


def test_auto_resume_and_finished_run(tmp_path, fmow_root):
    main_pretrain.main(_args(tmp_path, fmow_root, "--vis_every 0"))
    res = main_pretrain.main(_args(tmp_path, fmow_root, "--auto_resume --vis_every 0"))
    assert res["stats"] == {}  # epoch 0 of 1 was done: nothing left to train


def test_stage2_resamples_spatial_tables_and_keeps_the_rest(tmp_path):
    torch.manual_seed(0)
    m96 = models_mae_spectral.create_model(TINY)
    path = tmp_path / "stage1.pth"
    torch.save(
        {"model": {f"module.{k}": v for k, v in m96.state_dict().items()}, "epoch": 199}, path
    )
    m128 = models_mae_spectral.create_model("mae_vit_tiny_patch8_128")
    report = engine_pretrain.load_initial_weights(m128, path)
    old, new = m96.state_dict(), m128.state_dict()
    spatial = {"pos_embed_spatial", "decoder_pos_embed_spatial"}
    assert set(report["resampled"]) == spatial
    for key in spatial:
        assert old[key].shape[1] == 144 and new[key].shape[1] == 256
        want = resample_abs_pos_embed(old[key], [16, 16], [12, 12], num_prefix_tokens=0)
        torch.testing.assert_close(new[key], want)
    for key in new.keys() - spatial:
        torch.testing.assert_close(new[key], old[key], rtol=0, atol=0)


def test_stage2_cli_on_bigearthnet_from_stage1_checkpoint(tmp_path, fmow_root):
    from util.data.synthetic import generate

    ben = generate("bigearthnet", tmp_path / "ben", num=12, size=24, seed=1)
    stage1 = tmp_path / "s1"
    main_pretrain.main(_args(stage1, fmow_root, "--vis_every 0"))  # 16 px
    res = main_pretrain.main(
        _args(
            tmp_path / "s2",
            ben,
            f"--dataset_type bigearthnet --dropped_bands --input_size 24 --vis_every 0 "
            f"--resume_different_size {stage1 / 'checkpoint-0.pth'}",
        )
    )
    ckpt = torch.load(res["checkpoint"], weights_only=True)
    assert ckpt["model"]["pos_embed_spatial"].shape[1] == 9 and ckpt["epoch"] == 0
    assert ckpt["data"]["dataset"] == "bigearthnet" and ckpt["data"]["normalization"] == "minmax"


def test_paper_checkpoint_format_loads_as_initial_weights(tmp_path):
    """The released checkpoints' layout: separate q/k/v, "module." keys, a pickled Namespace."""
    torch.manual_seed(0)
    src = models_mae_spectral.create_model(TINY, img_size=16)
    paper = {}
    for k, v in src.state_dict().items():
        if ".attn.qkv." in k:
            for name, part in zip("qkv", v.chunk(3, dim=0)):
                paper[f"module.{k.replace('.qkv.', f'.{name}.')}"] = part.clone()
        else:
            paper[f"module.{k}"] = v
    path = tmp_path / "SpectralGPT.pth"
    torch.save({"model": paper, "epoch": 199, "args": argparse.Namespace(lr=1e-3)}, path)
    dst = models_mae_spectral.create_model(TINY, img_size=16)
    engine_pretrain.load_initial_weights(dst, path)
    _tensors_equal(dst.state_dict(), src.state_dict())


def test_paper_readme_commands_parse():
    parser = main_pretrain.get_args_parser()
    stage1 = (
        "--batch_size 16 --accum_iter 32 --blr 0.0002 --epochs 200 --warmup_epochs 20 --num_workers 16 "
        "--input_size 96 --patch_size 8 --mask_ratio 0.90 --model_type tensor --model mae_vit_base_patch8_96 "
        "--dataset_type sentinel --dropped_bands 10 --train_path DATA/train.csv --master_port=29501"
    )
    stage2 = (
        "--batch_size 16 --accum_iter 32 --blr 0.0001 --epochs 200 --warmup_epochs 20 --num_workers 16 "
        "--input_size 128 --patch_size 8 --mask_ratio 0.90 --model_type tensor --model mae_vit_base_patch8_128 "
        "--dataset_type bigearthnet --train_path DATA/ben.csv --resume_different_size ck/checkpoint-199.pth "
        "--master_port=29502"
    )
    for cmd, lr in ((stage1, 0.0032), (stage2, 0.0016)):
        a = parser.parse_args(shlex.split(cmd))
        uargs.validate_common_args(a)
        a.world_size = 8
        assert effective_lr(a) == pytest.approx(lr)
        assert a.model in models_mae_spectral.MODELS


def test_wandb_offline_without_credentials(tmp_path, monkeypatch):
    calls = {}

    class FakeRun:
        def log(self, data, step):
            calls.setdefault("log", []).append((data, step))

        def finish(self):
            calls["finish"] = True

    class FakeWandb:
        @staticmethod
        def init(**kw):
            calls["init"] = kw
            return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", FakeWandb)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    log = TrainLogger(tmp_path, wandb_project="proj", config={"lr": 1.0}, enabled=True)
    assert os.environ["WANDB_MODE"] == "offline"
    log.log_step(0, 3, {"loss": 2.0})
    log.close()
    assert calls["init"]["project"] == "proj" and calls["log"] == [({"train/loss": 2.0}, 3)]
    assert calls["finish"]


@pytest.mark.parametrize(
    "extra, match",
    [
        ("--dataset_type nope", "--dataset_type"),
        ("--dropped_bands 3", "--dropped_bands 3"),
        ("--dataset_type bigearthnet", "no B10"),
        ("--model_type group_c", "--model_type"),
        ("--batch_size 64", "fewer than one optimiser step"),
        ("--normalization nope", "--normalization"),
    ],
)
def test_clear_errors(tmp_path, fmow_root, extra, match):
    with pytest.raises(ValueError, match=match):
        main_pretrain.main(_args(tmp_path, fmow_root, extra))


def test_missing_train_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        main_pretrain.main(_args(tmp_path, tmp_path / "does-not-exist"))


def test_reconstruction_png(tmp_path):
    model = models_mae_spectral.create_model(TINY, img_size=16)
    path = save_reconstruction(tmp_path / "r.png", model, torch.rand(12, 16, 16), 0.75)
    from PIL import Image

    with Image.open(path) as im:
        assert im.size[0] > im.size[1] / 4 * 3 - 10  # 3 columns x 4 band rows


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process(tmp_path, fmow_root):
    """2 gloo processes x batch 2 == 1 process x batch 4: same masks, same data, same result."""
    common = "--accum_iter 2 --no_augment --vis_every 0 --seed 3 --warmup_epochs 0.5"
    one = main_pretrain.main(_args(tmp_path / "one", fmow_root, f"{common} --batch_size 4"))
    two = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO / "main_pretrain.py"),
    ]  # fmt: skip
    argv = shlex.split(
        f"--model {TINY} --input_size 16 --dataset_type sentinel --train_path {fmow_root} "
        f"--output_dir {two} --batch_size 2 --epochs 1 --num_workers 0 --device cpu --blr 1e-3 "
        f"--mask_ratio 0.75 --print_freq 2 {common}"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        cmd + argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in two.glob("checkpoint-*.pth")) == [
        "checkpoint-0.pth",
        "checkpoint-last.pth",
    ]
    a = torch.load(one["checkpoint"], weights_only=True)
    b = torch.load(two / "checkpoint-0.pth", weights_only=True)
    assert a["global_step"] == b["global_step"] > 1
    assert len(b["rng"]) == 2 and b["args"]["world_size"] == 2
    _tensors_equal(a["model"], b["model"], atol=2e-5)
    ep = [json.loads(s) for s in (two / "log.jsonl").read_text().splitlines() if '"epoch"' in s]
    assert ep[-1]["loss"] == pytest.approx(one["stats"]["loss"], rel=1e-4)


@pytest.mark.slow
def test_demo_script_short_variant(tmp_path):
    env = {
        **os.environ,
        "DEMO_SKIP_SETUP": "1",
        "PYTHON": sys.executable,
        "DEMO_OUT": str(tmp_path / "demo"),
        "DEMO_NUM": "24",
        "DEMO_EPOCHS": "1",
    }
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "demo.sh")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,  # five interpreter launches; the shared 2-core machine can be slow
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "demo" / "pretrain"
    assert f"pretrained checkpoint: {out / 'checkpoint-last.pth'}" in proc.stdout
    assert (out / "checkpoint-last.pth").is_file() and (out / "log.jsonl").is_file()
    assert f"reconstruction figure: {out / 'reconstruction-0.png'}" in proc.stdout
    from test_demo_summary import check_block  # the figures README quotes, in README's format

    check_block(proc.stdout)
