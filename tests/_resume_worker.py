"""torchrun worker for tests/test_resume.py: two finetuning runs in ONE launch (same processes).

``python -m torch.distributed.run --standalone --nproc_per_node 2 tests/_resume_worker.py ARGV...``

Runs ``main_finetune`` twice with the flags after the script name: once to ``--output_dir
OUT/straight`` (uninterrupted) and once to ``OUT/stopped`` with ``--stop_after_steps N`` (the
flags carry ``{out}`` and ``{extra}`` placeholders). The test then resumes ``OUT/stopped`` in a
fresh torchrun launch and compares it with ``OUT/straight``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def main(out: Path, stop_after: int, flags: str) -> None:
    torch.set_num_threads(1)
    import main_finetune
    import util.training.loop

    # one process group for both runs (a re-created default group can hang gloo, see
    # tests/_fsdp_worker.py)
    util.training.loop.cleanup_distributed = lambda: None
    torch.distributed.init_process_group("gloo")
    parser = main_finetune.get_args_parser()
    for name, extra in (("straight", ""), ("stopped", f"--stop_after_steps {stop_after}")):
        argv = shlex.split(flags.format(out=out / name, extra=extra))
        main_finetune.main(parser.parse_args(argv))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
