"""Worker for the 2-process gloo evaluation test (kept light: spawned children import only this)."""

import os

import torch
import torch.distributed as dist

from evaluation.metrics import build_metrics, eval_shard, to_python


def ddp_eval_worker(rank, world, port, logits, target, out):
    """Evaluate rank's unpadded shard in batches of 4, sync through torchmetrics, report on rank 0."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        metrics = build_metrics(target.shape[1], multilabel=True)
        idx = list(eval_shard(len(target), rank, world))
        for chunk in torch.tensor(idx).split(4):  # uneven batch counts across ranks
            metrics.update(logits[chunk], target[chunk])
        res = to_python(metrics.compute())
        res["count"] = int(dist.get_world_size())
        if rank == 0:
            out.put(res)
    finally:
        dist.destroy_process_group()
