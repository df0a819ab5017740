"""This process's place in a torchrun job, and the device it runs on."""

from __future__ import annotations

import os

import torch

from ..placement import default_device, parse_device

class Ranks:
    """This process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE), or a
    world of one; `join()` forms the process group (gloo, through torchrun's store) when there are several."""

    def __init__(self):
        env = os.environ
        self.rank, self.world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
        self.local_rank, self.local_world = int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1))

    def join(self) -> None:
        if self.world > 1:
            import datetime

            import torch.distributed as dist

            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank (each rank learns the same answer)."""
        if self.world == 1:
            return flag
        value = torch.tensor([int(flag)])
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()


class SameOnEveryRank(Exception):
    """Raised on ranks > 0 when rank 0 stops on a check that concerns the whole job: rank 0 says why."""


def rank_device(args, ranks: Ranks) -> torch.device:
    device = args.device or default_device()
    return parse_device(f"cuda:{ranks.local_rank}" if device == "cuda" and ranks.world > 1 else device)
