"""The GPU suite's plumbing on CPU (``benchmarks/gpu_suite.sh --dry-run``), the CUDA tests' skip
on machines without a GPU, the paper-step loader of ``bench_pretrain``, the suite's targets, and
the torch-build knob of ``scripts/venv.sh`` (printed, never installed: no test downloads)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_pretrain  # noqa: E402
import gpu_suite  # noqa: E402


def write_fake_paper_repo(root: Path) -> Path:
    """A stand-in for a checkout of the paper's repository (our own few lines, not its code):
    ``models_mae_spectral.py`` importing from a ``util/`` folder without ``__init__.py``, a factory
    that takes no arguments, a forward that draws its own masks and prints, as the paper's do."""
    (root / "util").mkdir(parents=True)
    (root / "util" / "tokens.py").write_text(
        textwrap.dedent(
            """
            from torch import nn


            class Tokens(nn.Module):
                def __init__(self, dim):
                    super().__init__()
                    self.proj = nn.Conv3d(1, dim, (3, 8, 8), (3, 8, 8))

                def forward(self, x):
                    return self.proj(x.unsqueeze(1)).flatten(2).transpose(1, 2)
            """
        )
    )
    (root / "models_mae_spectral.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            from util import tokens


            class StandIn(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.tokens = tokens.Tokens(16)
                    self.pred = nn.Linear(16, 192)
                    print("model initialized")

                def forward(self, imgs, mask_ratio=0.9):
                    print(imgs.shape, "forward")
                    t = self.tokens(imgs)
                    keep = max(1, int(t.shape[1] * (1 - mask_ratio)))
                    ids = torch.rand(t.shape[:2], device=t.device).argsort(1)[:, :keep]
                    pred = self.pred(torch.gather(t, 1, ids[..., None].expand(-1, -1, 16)))
                    return pred.float().pow(2).mean(), pred, torch.ones(t.shape[:2])


            def mae_vit_base_patch8_128():
                return StandIn()
            """
        )
    )
    return root


# ------------------------------------------------------------------------------------------------
# the dry run (CI): the whole plan on CPU with the tiny models
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu_suite")
    paper = write_fake_paper_repo(tmp / "paper")
    out = tmp / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(out),
         "--paper_repo", str(paper)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_dry_run_runs_every_section_and_writes_json_and_markdown(dry_run):
    out, stdout = dry_run
    res = json.loads((out / "results.json").read_text())
    assert res["suite"]["dry_run"] and res["suite"]["device"].startswith("CPU")
    assert list(res["sections"]) == list(gpu_suite.SECTIONS)
    for name, sec in res["sections"].items():
        assert sec["status"] == "ok", (name, sec.get("reason"))
        assert sec["rows"], name
    rows = res["sections"]
    ok = lambda name: [r for r in rows[name]["rows"] if r["status"] == "ok"]  # noqa: E731
    # pretraining: 2 sizes x 3 batches eager, the compiled rows listed as skipped (CPU compile)
    assert len(ok("pretrain")) == 6 and all(r["img_per_s"] > 0 for r in ok("pretrain"))
    assert {r["status"] for r in rows["pretrain"]["rows"] if r["compile"]} == {"skipped"}
    assert [r["batch_size"] for r in ok("paper")] == [2, 4, 8]
    assert len(ok("scale")) == 6 and all(r["largest_batch"] == 4 for r in ok("scale"))
    assert {r["variant"] for r in ok("dense")} == {"segmenter", "change_detector"}
    scene = ok("scene")
    assert len(scene) == 2 and all(r["km2_per_s"] > 0 for r in scene)
    assert ok("finetune")[0]["finetune_img_per_s"] > 0
    assert [t["status"] for t in res["targets"]] == ["dry run (not a GPU figure)"] * 2
    md = (out / "results.md").read_text()
    assert "NOT GPU figures" in md and "## Largest batch that fits" in md and "km²/s" in md
    assert "[gpu_suite] done" in stdout and not list(out.glob(".*.json"))


@pytest.mark.slow
def test_cuda_tests_are_collected_and_skipped_with_a_reason_without_a_gpu(dry_run):
    res = json.loads((dry_run[0] / "results.json").read_text())
    tests = res["sections"]["tests"]["rows"][0]
    assert tests["collected"] >= 8 and tests["failed"] == 0
    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["collected"]
        assert any("needs a CUDA device" in m for m in tests["skip_reasons"])


# ------------------------------------------------------------------------------------------------
# pieces
# ------------------------------------------------------------------------------------------------
def test_paper_model_loads_beside_our_util_package(tmp_path):
    import util

    paper = write_fake_paper_repo(tmp_path / "paper")
    model = bench_pretrain.load_paper_mae(paper, "mae_vit_base_patch8_128")
    assert type(model).__name__ == "StandIn"
    assert sys.modules["util"] is util  # ours is back
    from util.training import optim  # noqa: F401  (and still importable)

    with pytest.raises(SystemExit, match="--paper_repo"):
        bench_pretrain.load_paper_mae(tmp_path, "mae_vit_base_patch8_128")
    with pytest.raises(SystemExit, match="--paper_model"):
        bench_pretrain.load_paper_mae(paper, "mae_vit_gigantic_patch8_128")


def _results(ours: dict[int, float], paper: dict[int, float], mfu: float | None) -> dict:
    pre = [{"label": "ViT-B/8 128 px", "batch_size": b, "img_per_s": v, "mfu": mfu,
            "status": "ok"} for b, v in ours.items()]  # fmt: skip
    pre.append({"label": "ViT-B/8 96 px", "batch_size": 64, "img_per_s": 1e9, "status": "ok"})
    pap = [{"batch_size": b, "img_per_s": v, "status": "ok"} for b, v in paper.items()]
    return {"suite": {"dry_run": False},
            "sections": {"pretrain": {"rows": pre}, "paper": {"rows": pap}}}  # fmt: skip


def test_targets():
    t = gpu_suite.targets(_results({64: 700.0, 128: 900.0}, {64: 200.0, 128: 250.0}, 0.45))
    assert t[0]["status"] == "met" and t[0]["value"] == "batch 64: 3.50x, batch 128: 3.60x"
    assert t[1]["status"] == "met" and t[1]["value"] == 0.45
    t = gpu_suite.targets(_results({64: 500.0, 256: 900.0}, {64: 200.0, 128: 250.0}, 0.3))
    assert t[0]["status"] == "not met" and t[0]["value"] == "batch 64: 2.50x"  # equal batch only
    assert t[1]["status"] == "not met"
    t = gpu_suite.targets(_results({64: 500.0}, {}, None))
    assert [x["status"] for x in t] == ["not measured", "not measured"]


# ------------------------------------------------------------------------------------------------
# scripts/venv.sh: which torch build the README commands install
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def checkout(tmp_path):
    """The scripts and requirement files in a scratch folder (no .venv of the real checkout)."""
    shutil.copytree(REPO / "scripts", tmp_path / "scripts")
    for f in ("requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / f, tmp_path / f)
    return tmp_path


def _setup(checkout: Path, script: str, **knob: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SPECTRALGPT_TORCH", "TORCH_INDEX_URL")}
    env.update(SPECTRALGPT_VENV_DRY_RUN="1", **knob)
    return subprocess.run(["bash", f"scripts/{script}"], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize("script", ["test.sh", "demo.sh"])
@pytest.mark.parametrize(
    "knob, index",
    [
        ({}, None),  # default: PyPI's build, as before
        ({"SPECTRALGPT_TORCH": "default"}, None),
        ({"SPECTRALGPT_TORCH": "cpu"}, "https://download.pytorch.org/whl/cpu"),
        ({"SPECTRALGPT_TORCH": "cu126"}, "https://download.pytorch.org/whl/cu126"),
        ({"SPECTRALGPT_TORCH": "rocm6.4"}, "https://download.pytorch.org/whl/rocm6.4"),
        ({"SPECTRALGPT_TORCH": "cpu", "TORCH_INDEX_URL": "https://mirror.example/t"},
         "https://mirror.example/t"),
    ],
)  # fmt: skip
def test_venv_torch_build_knob(checkout, script, knob, index):
    proc = _setup(checkout, script, **knob)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "+ python -m pip install -q -r requirements-dev.txt" in lines
    torch_lines = [x for x in lines if "install -q torch torchvision" in x]
    if index is None:
        assert torch_lines == []
    else:
        assert torch_lines == [f"+ python -m pip install -q torch torchvision --index-url {index}"]
    assert "nothing was created or installed" in proc.stdout  # and the script stopped there
    assert "[demo]" not in proc.stdout and not (checkout / ".venv").exists()


def test_venv_knob_rejects_an_unknown_build(checkout):
    proc = _setup(checkout, "test.sh", SPECTRALGPT_TORCH="cuda12")
    assert proc.returncode == 2
    assert "SPECTRALGPT_TORCH=cuda12" in proc.stderr and "cu126" in proc.stderr


def test_venv_switch_from_the_cuda_build_to_cpu_drops_its_packages(checkout):
    bin_ = checkout / ".venv" / "bin"
    bin_.mkdir(parents=True)
    (bin_ / "python").write_text(  # answers the two pip queries venv.sh makes
        "#!/bin/bash\ncase \"$*\" in\n  '-m pip show -q torch') exit 0 ;;\n"
        "  '-m pip list --format=freeze') printf 'nvidia-cublas-cu12==12.8\\ntriton==3.4\\n"
        "numpy==2.3\\n' ;;\n  *) exit 1 ;;\nesac\n"
    )
    (bin_ / "python").chmod(0o755)
    proc = _setup(checkout, "test.sh", SPECTRALGPT_TORCH="cpu")
    assert proc.returncode == 0, proc.stderr
    assert "+ python -m pip uninstall -y -q torch torchvision" in proc.stdout
    assert "+ python -m pip uninstall -y -q nvidia-cublas-cu12 triton" in proc.stdout
    (checkout / ".venv" / ".torch-index").write_text("https://download.pytorch.org/whl/cpu\n")
    (checkout / ".venv" / ".requirements.sha").write_text("stale\n")
    proc = _setup(checkout, "test.sh", SPECTRALGPT_TORCH="cpu")  # same build: nothing replaced
    assert "uninstall" not in proc.stdout
