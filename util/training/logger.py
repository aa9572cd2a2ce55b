"""Training logs: rank-0 tqdm bar, JSON lines, TensorBoard, optional wandb, and an MFU estimate.

* :class:`TrainLogger` writes ``OUTPUT_DIR/log.jsonl`` (one JSON object per epoch and per log step;
  after a resume each step once: :meth:`TrainLogger.mark_resume`),
  TensorBoard scalars (imported lazily) and, with ``--wandb PROJECT``, Weights & Biases (imported
  lazily; offline mode when no API key is configured). On ranks other than 0 every method is a no-op.
  Progress bars are drawn only when stdout and stderr are terminals (and not ``--no_progress``);
  otherwise (batch jobs, redirected output) each log step prints one line with epoch, step, loss,
  img/s and the whole run's ETA.
* :func:`measure_flops` counts the FLOPs of one call with ``torch.utils.flop_counter``;
  :func:`peak_flops` looks up the dense peak of the device from its name; :func:`mfu` divides.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from util.training.runtime import is_main_process

logger = logging.getLogger(__name__)

#: the one name of training throughput (images per second over all ranks): TensorBoard/wandb tags
#: ``train/img_per_s`` (steps) and ``epoch/<prefix>img_per_s`` (epochs) in every trainer
THROUGHPUT = "img_per_s"
#: other spellings of it, renamed to :data:`THROUGHPUT` on the way to TensorBoard and wandb
THROUGHPUT_ALIASES = ("images_per_s", "imgs_per_s", "samples_per_s")


def canonical_scalars(scalars: dict[str, Any]) -> dict[str, Any]:
    """``scalars`` with every throughput key spelled :data:`THROUGHPUT` (``images_per_s`` ->
    ``img_per_s``, ``train_images_per_s`` -> ``train_img_per_s``); other keys unchanged."""
    out: dict[str, Any] = {}
    for key, value in scalars.items():
        for alias in THROUGHPUT_ALIASES:
            if key == alias or key.endswith("_" + alias):
                key = key[: len(key) - len(alias)] + THROUGHPUT
                break
        out[key] = value
    return out


# Dense (no sparsity) peak TFLOP/s per device: (bf16/fp16 tensor core, tf32 tensor core, fp32).
# Matched by substring of torch.cuda.get_device_name(), first match wins (specific names first).
_PEAK_TFLOPS: list[tuple[str, tuple[float, float, float]]] = [
    ("GB200", (2500.0, 1250.0, 80.0)),
    ("B200", (2250.0, 1100.0, 80.0)),
    ("H200", (989.4, 494.7, 66.9)),
    ("H100 PCIe", (756.0, 378.0, 51.2)),
    ("H100 NVL", (835.0, 417.0, 60.0)),
    ("H100", (989.4, 494.7, 66.9)),
    ("H800", (989.4, 494.7, 66.9)),
    ("GH200", (989.4, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
    ("A800", (312.0, 156.0, 19.5)),
    ("L40S", (362.1, 183.0, 91.6)),
    ("L40", (181.0, 90.5, 90.5)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10G", (70.0, 35.0, 31.2)),
    ("A10", (125.0, 62.5, 31.2)),
    ("A6000", (154.8, 77.4, 38.7)),
    ("RTX 4090", (165.2, 82.6, 82.6)),
    ("RTX 3090", (71.0, 35.6, 35.6)),
    ("V100", (125.0, 15.7, 15.7)),
    ("T4", (65.0, 8.1, 8.1)),
]


def peak_flops(device: torch.device | str, dtype: torch.dtype = torch.bfloat16) -> float | None:
    """Dense peak FLOP/s of ``device`` for ``dtype`` from its name; ``None`` if unknown or CPU."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in _PEAK_TFLOPS:
        if key in name:
            if dtype in (torch.bfloat16, torch.float16):
                tflops = half
            elif torch.backends.cuda.matmul.allow_tf32:
                tflops = tf32
            else:
                tflops = fp32
            return tflops * 1e12
    logger.info("no peak FLOP/s known for %r: MFU not logged", name)
    return None


def measure_flops(fn: Callable[[], Any]) -> int:
    """FLOPs executed by ``fn()`` (e.g. one forward + backward), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def mfu(flops_per_step: float | None, steps_per_second: float, peak: float | None) -> float | None:
    """Model FLOP utilisation in [0, 1], or ``None`` when either number is unknown."""
    if not flops_per_step or not peak or not math.isfinite(steps_per_second):
        return None
    return flops_per_step * steps_per_second / peak


def _setup_wandb(project: str, entity: str | None, config: dict[str, Any], run_dir: Path) -> Any:
    try:
        import wandb
    except ImportError as e:
        raise ImportError(
            f"--wandb {project} needs the wandb package (in requirements.txt): "
            "pip install -r requirements.txt, or pip install wandb (or drop --wandb)"
        ) from e
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        has_login = False
        try:
            import netrc

            has_login = netrc.netrc().authenticators("api.wandb.ai") is not None
        except (OSError, netrc.NetrcParseError):
            pass
        if not has_login:
            os.environ["WANDB_MODE"] = "offline"
            logger.info("wandb: no API key configured, logging offline to %s (sync later)", run_dir)
    return wandb.init(project=project, entity=entity, config=config, dir=str(run_dir))


class TrainLogger:
    """Rank-0 logging sink. Every method is cheap and safe to call on any rank.

    Args:
        output_dir: folder of ``log.jsonl``.
        log_dir: TensorBoard folder (``None``: ``output_dir``; ``""``: TensorBoard off).
        wandb_project: project name for wandb, or ``None`` (off).
        wandb_entity: optional wandb entity.
        config: run configuration (plain dict) for wandb.
        enabled: write anything at all (default: rank 0 only).
        progress: draw tqdm bars (default: only when stdout and stderr are terminals); without
            bars, :meth:`log_step` prints a line per log step.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        log_dir: str | os.PathLike | None = None,
        wandb_project: str | None = None,
        wandb_entity: str | None = None,
        config: dict[str, Any] | None = None,
        enabled: bool | None = None,
        progress: bool | None = None,
    ) -> None:
        self.enabled = is_main_process() if enabled is None else enabled
        self.output_dir = Path(output_dir)
        self.jsonl_path = self.output_dir / "log.jsonl"
        self._tb = None
        self._wandb = None
        self.show_progress = stream_is_terminal() if progress is None else bool(progress)
        self._run: tuple[float, int, int] | None = None  # (start time, start epoch, epochs)
        #: micro-batches per optimiser step (``--accum_iter``; set by ``TrainLoop``): the step
        #: lines count optimiser steps, the unit of "steps/epoch", ``--save_every_steps`` and
        #: ``--stop_after_steps``
        self.accum_iter = 1
        if not self.enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tb_dir = self.output_dir if log_dir is None else log_dir
        if tb_dir != "":
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(tb_dir))
            except ImportError:
                logger.warning("tensorboard is not installed: TensorBoard logging off")
        if wandb_project:
            self._wandb = _setup_wandb(wandb_project, wandb_entity, config or {}, self.output_dir)

    def progress(self, iterable: Iterable, total: int | None = None, desc: str = "") -> Iterable:
        """tqdm bar on rank 0 (to stderr) when bars are on, the plain iterable otherwise."""
        if not self.enabled or not self.show_progress:
            return iterable
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)

    def write_json(self, record: dict[str, Any]) -> None:
        """Append one JSON object to ``log.jsonl``."""
        if not self.enabled:
            return
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def log_scalars(self, scalars: dict[str, Any], step: int, prefix: str = "train") -> None:
        """Log scalars (python numbers; ``None`` values skipped) to TensorBoard and wandb, as
        ``<prefix>/<name>`` (throughput always as :data:`THROUGHPUT`, see :func:`canonical_scalars`)."""
        if not self.enabled:
            return
        clean = {
            f"{prefix}/{k}": float(v)
            for k, v in canonical_scalars(scalars).items()
            if v is not None
        }
        if self._tb is not None:
            for tag, value in clean.items():
                self._tb.add_scalar(tag, value, step)
        if self._wandb is not None:
            self._wandb.log(clean, step=step)

    def start_run(self, start_epoch: int, epochs: int) -> None:
        """Start the clock for the whole-run ETA of the step lines (epochs ``start_epoch..epochs-1``)."""
        self._run = (time.perf_counter(), int(start_epoch), int(epochs))

    def eta(self, epoch: int, epoch_fraction: float) -> float | None:
        """Seconds left in the run, from the time per epoch so far; ``None`` before :meth:`start_run`."""
        if self._run is None:
            return None
        t0, first, epochs = self._run
        done = (epoch - first) + min(max(epoch_fraction, 0.0), 1.0)
        if done <= 0:
            return None
        return (time.perf_counter() - t0) / done * max(epochs - first - done, 0.0)

    def log_step(
        self,
        epoch: int,
        step: int,
        scalars: dict[str, Any],
        it: int | None = None,
        total: int | None = None,
    ) -> None:
        """One training log step: TensorBoard/wandb scalars and a ``log.jsonl`` line.

        ``it`` / ``total`` (micro-batch within the epoch, micro-batches per epoch) give the
        progress for the line printed when progress bars are off: epoch, optimiser step / steps
        per epoch (micro-batches / :attr:`accum_iter`), loss, img/s, run ETA; ``it`` is also
        written (as ``batch``), so that a resumed run keeps the lines before its checkpoint.
        """
        if not self.enabled:
            return
        self.log_scalars(scalars, step, prefix="train")
        record: dict[str, Any] = {"type": "step", "epoch": epoch, "step": step}
        if it is not None:
            record["batch"] = it  # micro-batch index in the epoch: what mark_resume keeps
        self.write_json({**record, **scalars, "time": time.time()})
        if not self.show_progress:
            logger.info(self.step_line(epoch, scalars, it, total))

    def step_line(
        self, epoch: int, scalars: dict[str, Any], it: int | None, total: int | None
    ) -> str:
        """``epoch 3 step 120/500 (24%) loss 0.1234 lr 1.2e-04 150.2 img/s ETA 1:02:03``."""
        parts = [f"epoch {epoch}"]
        if it is not None:
            a = max(1, int(self.accum_iter))  # optimiser steps, as the header counts them
            pos = f"step {(it + 1) // a}" + (f"/{total // a}" if total else "")
            parts.append(pos + (f" ({100 * (it + 1) / total:.0f}%)" if total else ""))
        for key, fmt in (("loss", ".4f"), ("lr", ".3g")):
            if scalars.get(key) is not None:
                parts.append(f"{key} {scalars[key]:{fmt}}")
        rate = canonical_scalars(scalars).get(THROUGHPUT)
        if rate is not None:
            parts.append(f"{rate:.1f} img/s")
        if it is not None and total:
            left = self.eta(epoch, (it + 1) / total)
            if left is not None:
                parts.append(f"ETA {datetime.timedelta(seconds=round(left))}")
        return " ".join(parts)

    def mark_resume(
        self, start_epoch: int, step: int, checkpoint: str | os.PathLike, batches: int = 0
    ) -> int:
        """Drop the ``log.jsonl`` records that the resumed run writes again and append a
        ``{"type": "resume"}`` record. Returns the lines dropped.

        The run continues epoch ``start_epoch`` after its first ``batches`` micro-batches (0: from
        its start). Kept: records of earlier epochs and the step lines of epoch ``start_epoch``
        written before the checkpoint (``batch`` < ``batches``); dropped: everything later (step
        lines past the checkpoint, that epoch's summary, later epochs) and lines cut by a kill.
        """
        if not self.enabled:
            return 0
        dropped = 0
        if self.jsonl_path.is_file():
            kept = []
            for line in self.jsonl_path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by the kill
                    dropped += 1
                    continue
                if _written_again(rec, start_epoch, batches):
                    dropped += 1
                    continue
                kept.append(line)
            if dropped:
                tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(ln + "\n" for ln in kept))
                os.replace(tmp, self.jsonl_path)
        self.write_json(
            {
                "type": "resume",
                "epoch": int(start_epoch),
                "batch": int(batches),
                "step": int(step),
                "checkpoint": str(checkpoint),
                "dropped_lines": dropped,
                "time": time.time(),
            }
        )
        return dropped

    def log_epoch(self, epoch: int, stats: dict[str, Any], step: int | None = None) -> None:
        """End-of-epoch averages: ``log.jsonl`` line and ``epoch/*`` scalars."""
        if not self.enabled:
            return
        self.log_scalars(stats, epoch if step is None else step, prefix="epoch")
        self.write_json({"type": "epoch", "epoch": epoch, **stats, "time": time.time()})

    def flush(self) -> None:
        """Flush TensorBoard."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Close TensorBoard and finish wandb."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _written_again(record: Any, start_epoch: int, batches: int) -> bool:
    """Whether a run resumed at micro-batch ``batches`` of epoch ``start_epoch`` writes ``record``
    (a ``log.jsonl`` object) again: see :meth:`TrainLogger.mark_resume`."""
    if not isinstance(record, dict) or record.get("type") == "resume":
        return False
    epoch = record.get("epoch")
    if not isinstance(epoch, int) or epoch < start_epoch:
        return False
    if epoch > start_epoch or record.get("type") != "step":
        return True
    batch = record.get("batch")  # micro-batch index of a step line within its epoch
    return not (isinstance(batch, int) and batch < batches)


def stream_is_terminal() -> bool:
    """True when both stdout and stderr are terminals (interactive use, not a batch job)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _jsonable(value: Any) -> Any:
    if torch.is_tensor(value):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int | float | str | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return str(value)
