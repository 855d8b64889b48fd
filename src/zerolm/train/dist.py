"""torch.distributed set-up: the same command runs on one process or under torchrun."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str = "auto") -> torch.device:
    """Initialise the process group when launched by torchrun (gloo on CPU, NCCL on
    GPU) and return this process's device."""
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if device not in ("auto", "cuda", "cpu") and not device.startswith("cuda:"):
        raise ValueError(f"train.device must be auto, cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda:"):
        use_cuda = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_distributed():
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(device if device.startswith("cuda:") else f"cuda:{local}")
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= world_size()
    return values


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is True on any of them (a stop request or a signal
    that reached only some processes). `device`: this process's device (NCCL needs CUDA)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_object(obj):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_world_size() -> int:
    """Processes of this job on this machine (torchrun sets LOCAL_WORLD_SIZE)."""
    try:
        return max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    except ValueError:
        return 1


def choose_threads(requested: int) -> tuple[int, str]:
    """(torch CPU threads to use, why). `requested` > 0 is used as given; 0 (auto) shares
    the CPUs this process may run on among the processes of the job on this machine.

    torch's default is the machine's core count in every process: on a busy or shared
    machine, or with several processes per machine, the threads then wait on each other
    (a 2-core box ran 22x slower with 2 threads than with 1 while other work ran).
    """
    if requested > 0:
        return requested, f"train.threads={requested}"
    cpus, where = _usable_cpus()
    local = local_world_size()
    procs = "1 process" if local == 1 else f"{local} processes on this machine"
    return max(cpus // local, 1), f"{_plural(cpus, 'CPU')} in this process's {where}, {procs}"


def _plural(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n == 1 else "s")


def _usable_cpus() -> tuple[int, str]:
    """CPUs this process may use, and where that number comes from."""
    try:
        cpus, where = len(os.sched_getaffinity(0)), "affinity"
    except AttributeError:  # not Linux
        cpus, where = os.cpu_count() or 1, "machine"
    quota = _cgroup_cpu_quota()
    if quota is not None and quota < cpus:  # a container limited to fewer CPUs than it sees
        cpus, where = quota, "cgroup CPU quota"
    return max(cpus, 1), where


def _cgroup_cpu_quota() -> int | None:
    """The CPU limit of this container (cgroup v2 `cpu.max`, rounded up), None if unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(-(-int(quota) // int(period)), 1)


def teardown() -> None:
    """Leave the process group together: a rank that exits while another still talks to
    it can abort the gloo transport ("terminate called without an active exception")."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
