"""torchrun worker for tests/test_scale.py: everything the 2-process FSDP tests need, in ONE launch.

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_fsdp_worker.py OUT FMOW EUROSAT``

1. ``main_pretrain`` under ``--strategy fsdp``: 2 epochs straight (``OUT/pre``), then a run resumed
   from its epoch-0 checkpoint (``OUT/pre_resumed``);
2. a classifier trained for a few micro-steps with :func:`classifier_steps` under FSDP with
   activation checkpointing (``OUT/cls.pth``: weights and gradient norms);
3. ``main_finetune`` under ``--strategy fsdp`` on an evaluation set whose shards differ in length
   (``OUT/ft``).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import models_vit_tensor  # noqa: E402
from util.training.checkpoint import model_state_dict  # noqa: E402
from util.training.optim import OptimStep, create_adamw  # noqa: E402
from util.training.runtime import get_rank, get_world_size, wrap_model  # noqa: E402

TINY_MAE = "mae_vit_tiny_patch8_96"
PRETRAIN_COMMON = (
    "--input_size 16 --dataset_type sentinel --num_workers 0 --device cpu --blr 1e-3 "
    "--mask_ratio 0.75 --print_freq 2 --accum_iter 2 --no_augment --seed 3 --warmup_epochs 0.5 "
    "--clip_grad 0.5 --save_every 1 --epochs 2"
)
GLOBAL_BATCH = 8


def pretrain_argv(root: Path, out: Path, batch_size: int, extra: str = "") -> list[str]:
    """Flags of the pretraining runs (1 process uses ``batch_size`` = the 2-process global batch)."""
    return shlex.split(
        f"--model {TINY_MAE} --train_path {root} --output_dir {out} --batch_size {batch_size} "
        f"{PRETRAIN_COMMON} {extra}"
    )


def classifier_data() -> tuple[torch.Tensor, torch.Tensor]:
    """4 micro-batches of the global batch: images ``(4, 8, 12, 16, 16)``, labels ``(4, 8)``."""
    g = torch.Generator().manual_seed(7)
    return torch.rand(4, GLOBAL_BATCH, 12, 16, 16, generator=g), torch.randint(
        0, 10, (4, GLOBAL_BATCH), generator=g
    )


def classifier_steps(
    strategy: str = "ddp", grad_checkpointing: bool = False
) -> tuple[dict[str, torch.Tensor], list[float]]:
    """Train ``vit_tiny`` (16 px, 10 classes) for 4 micro-steps, ``accum_iter`` 2, clipping at 0.1;
    each rank takes its slice of every global batch. Returns (full weights on rank 0, grad norms)."""
    torch.manual_seed(0)
    model = models_vit_tensor.create_model(
        "vit_tiny_patch8_96", img_size=16, num_classes=10, drop_path_rate=0.0
    )
    world, rank = get_world_size(), get_rank()
    net = wrap_model(
        model,
        distributed=world > 1,
        device="cpu",
        strategy=strategy,
        grad_checkpointing=grad_checkpointing,
    )
    opt = create_adamw(model.parameters(), lr=1e-3, weight_decay=0.05)
    step = OptimStep(net, opt, accum_iter=2, clip_grad=0.1)
    images, labels = classifier_data()
    per = GLOBAL_BATCH // world
    norms = []
    for it in range(images.shape[0]):
        x = images[it, rank * per : (rank + 1) * per]
        y = labels[it, rank * per : (rank + 1) * per]
        out = step(it, lambda x=x, y=y: torch.nn.functional.cross_entropy(net(x), y))
        if out.grad_norm is not None:
            norms.append(float(out.grad_norm))
    return model_state_dict(model), norms


def main(out: Path, fmow: Path, eurosat: Path) -> None:
    torch.set_num_threads(1)
    import main_finetune
    import main_pretrain
    import util.training.loop

    # one process group for all runs: a default group re-created after destroy_process_group()
    # reuses the store's rendezvous keys of the previous one, and gloo then hangs now and then
    util.training.loop.cleanup_distributed = lambda: None
    torch.distributed.init_process_group("gloo")

    pre_parser = main_pretrain.get_args_parser()
    fsdp = "--strategy fsdp"
    main_pretrain.main(pre_parser.parse_args(pretrain_argv(fmow, out / "pre", 2, fsdp)))
    resume = f"{fsdp} --vis_every 0 --resume {out / 'pre' / 'checkpoint-0.pth'}"
    main_pretrain.main(pre_parser.parse_args(pretrain_argv(fmow, out / "pre_resumed", 2, resume)))

    state, norms = classifier_steps("fsdp", grad_checkpointing=True)
    if get_rank() == 0:
        torch.save({"model": state, "grad_norms": norms}, out / "cls.pth")

    ft_parser = main_finetune.get_args_parser()
    main_finetune.main(
        ft_parser.parse_args(
            shlex.split(
                f"--model vit_tiny_patch8_96 --input_size 16 --device cpu --num_workers 0 "
                f"--batch_size 2 --epochs 1 --print_freq 1 --dataset_type euro_sat --max_steps_per_epoch 4 "
                f"--train_path {eurosat / 'train_euro_result.txt'} --test_path {eurosat / 'val5.txt'} --output_dir {out / 'ft'} "
                f"--drop_path 0 --mixup 0 --cutmix 0 --reprob 0 --warmup_epochs 0 --native_size 0 {fsdp} --grad_checkpointing"
            )
        )
    )
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
