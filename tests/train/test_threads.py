"""CPU threads: chosen from the CPUs this process may use (not the machine's), said in the
first line of a run, and a warning when training slows down mid-run because other work
took the cores (a 2-core machine ran 22x slower with torch's default thread count)."""

import logging
import os
import time

import numpy as np
import pytest
import torch

from zerolm.config import OptimConfig, ScheduleConfig, TrainConfig
from zerolm.data.lm import CausalLMBatches
from zerolm.models import ModelConfig, build_model
from zerolm.tasks import CausalLMTask
from zerolm.train import dist, loop
from zerolm.train.loop import Trainer


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _machine(monkeypatch, cpus: int, local: int | None = None, quota: int | None = None) -> None:
    """This process may run on `cpus` CPUs, `local` processes share the machine (torchrun)."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(dist, "_cgroup_cpu_quota", lambda: quota)
    if local is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local))


@pytest.mark.parametrize("cpus, local, expected", [(1, None, 1), (4, None, 4), (4, 2, 2), (2, 4, 1),
                                                   (6, 4, 1)])
def test_auto_threads_share_the_cpus_this_process_may_use(monkeypatch, cpus, local, expected):
    _machine(monkeypatch, cpus, local)
    n, why = dist.choose_threads(0)
    procs = "1 process" if local is None else f"{local} processes on this machine"
    assert n == expected
    assert why == f"{cpus} CPU{'s' if cpus > 1 else ''} in this process's affinity, {procs}"


def test_a_container_cpu_quota_caps_the_auto_choice(monkeypatch):
    _machine(monkeypatch, 8, quota=2)
    assert dist.choose_threads(0) == (2, "2 CPUs in this process's cgroup CPU quota, 1 process")


def test_requested_threads_are_used_as_given(monkeypatch):
    _machine(monkeypatch, 1, 2)
    assert dist.choose_threads(3) == (3, "train.threads=3")


def _trainer(out, task=None, **train) -> Trainer:
    cfg = ModelConfig(family="gpt", vocab_size=13, d_model=16, n_layers=1, n_heads=2, d_ff=24,
                      max_seq_len=8)
    torch.manual_seed(0)
    data = CausalLMBatches(np.arange(400) % 13, 8, 4, seed=0)
    tc = TrainConfig(**{"eval_every": 0, "save_every": 0, "progress": False, **train})
    return Trainer(build_model(cfg), task or CausalLMTask(), data, train=tc, optim=OptimConfig(),
                   schedule=ScheduleConfig(warmup_steps=0), out_dir=out)


def test_the_trainer_uses_the_choice_and_says_so_first(tmp_path, monkeypatch, caplog):
    _machine(monkeypatch, 1)
    torch.set_num_threads(2)
    trainer = _trainer(tmp_path / "run", max_steps=2, threads=0)
    assert torch.get_num_threads() == 1
    caplog.set_level(logging.INFO)
    trainer.fit()
    first = caplog.records[0].getMessage()
    assert first == "1 torch thread (1 CPU in this process's affinity, 1 process)"


class _Paced(CausalLMTask):
    """Each step takes at least `delay` seconds: a stand-in for CPUs taken by other work."""

    delay = 0.01

    def loss(self, model, batch):
        time.sleep(self.delay)
        return super().loss(model, batch)


@pytest.mark.parametrize("contended", [True, False])
def test_a_collapse_in_throughput_is_warned_about_once(tmp_path, monkeypatch, caplog, contended):
    monkeypatch.setattr(loop, "_MIN_WINDOW_S", 0.0)  # the windows here are short but clear
    task = _Paced()

    def contention_from_step_12(trainer, step, row):
        if step == 12 and contended:
            task.delay = 0.1

    trainer = _trainer(tmp_path / "run", task, max_steps=20, log_every=4, threads=1)
    trainer.callbacks.append(contention_from_step_12)
    caplog.set_level(logging.INFO, logger="zerolm.train.loop")
    trainer.fit()
    messages = [r.getMessage() for r in caplog.records]
    slow = [i for i, m in enumerate(messages) if m.startswith("training slowed to")]
    if not contended:
        assert slow == []
        return
    assert len(slow) == 1 and "train.threads=1" in messages[slow[0]]
    step_12 = next(i for i, m in enumerate(messages) if m.startswith("step 12/20"))
    assert slow[0] > step_12  # not before the slowdown
