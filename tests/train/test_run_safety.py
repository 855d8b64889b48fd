"""A run's work is never lost or mixed: one run per directory, nothing written on top of an
earlier run, a clean stop on SIGTERM, resuming past a damaged checkpoint, directories that
are replaced in one step, and a finished run that keeps only what it needs."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zerolm import atomic
from zerolm.atomic import AtomicDir, atomic_write_text, recover_dir
from zerolm.cli.main import main
from zerolm.config import load_config
from zerolm.errors import CheckpointError, ConfigError, ZeroLMError
from zerolm.train.checkpoint import list_checkpoints
from zerolm.train.pretrain import pretrain
from zerolm.train.rundir import disk_usage, lock_holder, open_run_dir, read_run_state

REPO = Path(__file__).resolve().parents[2]
TINY_CHAR = REPO / "configs" / "tiny" / "gpt_char.yaml"
FAST = ["train.log_every=1", "train.threads=1"]


def _cfg(out: Path, *overrides):
    return load_config(TINY_CHAR, [f"out_dir={out}", *overrides])


def _snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _visible(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _steps(out: Path) -> list[int]:
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------ used directories


def test_a_used_run_directory_is_refused_and_left_byte_identical(tmp_path):
    cfg = _cfg(tmp_path / "run", "train.max_steps=4", "train.save_every=2", *FAST)
    res = pretrain(cfg)
    before = _snapshot(res.out_dir)
    with pytest.raises(ZeroLMError) as e:
        pretrain(cfg)
    msg = str(e.value)
    assert "\n" not in msg and "already holds a run" in msg
    for said in ("checkpoints/", "metrics.jsonl", "--resume", "--overwrite"):
        assert said in msg
    assert _snapshot(res.out_dir) == before
    with open_run_dir(res.out_dir, resume=True, overwrite=False):  # continuing it is allowed
        pass
    assert _snapshot(res.out_dir) == before


def test_overwrite_removes_the_earlier_run_says_what_and_nothing_mixes(tmp_path, caplog):
    out = tmp_path / "run"
    pretrain(_cfg(out, "train.max_steps=4", "train.save_every=2", *FAST))
    caplog.set_level(logging.INFO, logger="zerolm.train.rundir")
    second = pretrain(_cfg(out, "train.max_steps=2", *FAST), overwrite=True)
    removed = [r.getMessage() for r in caplog.records if "--overwrite: removed" in r.getMessage()]
    assert len(removed) == 1
    for name in ("checkpoints/", "final/", "tokenizer/", "metrics.jsonl", "config.yaml",
                 "loss.png"):
        assert name in removed[0]
    assert _steps(second.out_dir) == [1, 2]  # no row of the first run left behind
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]


def test_overwrite_never_deletes_files_a_run_does_not_write(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(ZeroLMError, match=r"also holds notes\.txt.*nothing was deleted"):
        open_run_dir(out, resume=False, overwrite=True)
    assert _visible(out) == ["metrics.jsonl", "notes.txt"]
    with pytest.raises(ConfigError, match="contradict"):
        open_run_dir(out, resume=True, overwrite=True)


_HOLD = textwrap.dedent("""
    import sys, time
    from zerolm.train.rundir import open_run_dir
    with open_run_dir(sys.argv[1], resume=False, overwrite=False):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_a_second_process_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(ZeroLMError, match=rf"in use by another run \(PID {proc.pid} on "):
            open_run_dir(out, resume=True, overwrite=False)
        assert main(["clean", str(out)]) == 2
        assert f"PID {proc.pid}" in capsys.readouterr().err
    finally:
        proc.kill()  # dies holding the lock: the kernel releases it, the PID text stays
        proc.wait()
    with open_run_dir(out, resume=False, overwrite=False):
        assert lock_holder(out) == f"PID {os.getpid()} on {os.uname().nodename}"
    assert lock_holder(out) is None


_RANKS = textwrap.dedent("""
    import os, sys
    from zerolm.errors import ZeroLMError
    from zerolm.train import dist
    from zerolm.train.rundir import lock_holder, open_run_dir
    dist.setup("cpu")
    with open_run_dir(sys.argv[1], resume=False, overwrite=False):
        holder = lock_holder(sys.argv[1])
        print(f"lock rank{dist.rank()} pid {os.getpid()} sees {holder}", flush=True)
        dist.barrier()
    try:
        open_run_dir(sys.argv[2], resume=False, overwrite=False)
    except ZeroLMError as e:
        print(f"refused rank{dist.rank()}: {e}", flush=True)
    dist.teardown()
""")


def test_under_torchrun_rank_0_locks_and_every_rank_gets_the_refusal(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "metrics.jsonl").write_text("{}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "ranks.py"), str(tmp_path / "free"), str(used)]
    (tmp_path / "ranks.py").write_text(_RANKS)
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # two processes print to one pipe: lines may run together, so search rather than split
    host = re.escape(os.uname().nodename)
    said = dict(re.findall(rf"lock (rank[01]) pid \d+ sees PID (\d+) on {host}", proc.stdout))
    rank0_pid = re.search(r"lock rank0 pid (\d+)", proc.stdout).group(1)
    assert said == {"rank0": rank0_pid, "rank1": rank0_pid}, proc.stdout  # one lock: rank 0's
    for rank in (0, 1):
        said = f"refused rank{rank}: {used} already holds a run"
        assert proc.stdout.count(said) == 1, proc.stdout


# -------------------------------------------------------------------- SIGTERM

_PACED = textwrap.dedent("""
    import signal, sys, time
    from zerolm.config import load_config
    from zerolm.train.pretrain import pretrain

    def pace(trainer, step, row):
        print("step", step, flush=True)
        time.sleep(0.05)

    res = pretrain(load_config(sys.argv[1], sys.argv[2:]), callbacks=[pace])
    restored = signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    print("result", res.step, res.interrupted, restored, flush=True)
""")


def test_sigterm_stops_after_the_step_with_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = [f"out_dir={out}", "train.max_steps=40", "train.save_every=0", *FAST]
    proc = subprocess.Popen([sys.executable, "-c", _PACED, str(TINY_CHAR), *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.strip() == "step 3":
            proc.send_signal(signal.SIGTERM)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    _, step, interrupted, restored = rest.splitlines()[-1].split()
    stopped = int(step)
    assert 3 <= stopped < 40 and interrupted == "True" and restored == "True"
    assert "SIGTERM: stopping after this step" in err
    assert (out / "checkpoints" / f"step-{stopped:08d}").is_dir()
    assert read_run_state(out)["status"] == "interrupted"

    resumed = pretrain(load_config(TINY_CHAR, args), resume=True)
    assert resumed.step == 40 and not resumed.interrupted
    assert _steps(out) == list(range(1, 41))
    assert read_run_state(out)["status"] == "finished"


# --------------------------------------------------------- damaged checkpoints


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate),
    "truncated optimizer": ("optimizer.safetensors", _truncate),
    "broken trainer state": ("trainer_state.json", lambda p: p.write_text('{"step": 6, "be')),
    "missing weights": ("model.safetensors", Path.unlink),
}


@pytest.fixture(scope="module")
def run_with_three_checkpoints(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("three")
    pretrain(_cfg(root / "run", f"data.cache_dir={root / 'cache'}", "train.max_steps=6",
                  "train.save_every=2", "train.keep_checkpoints=3", *FAST))
    return root / "run"


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_resumes_from_the_one_before(run_with_three_checkpoints,
                                                                  tmp_path, damage, caplog):
    out = tmp_path / "run"
    shutil.copytree(run_with_three_checkpoints, out)
    name, spoil = DAMAGE[damage]
    bad = out / "checkpoints" / "step-00000006" / name
    spoil(bad)
    caplog.set_level(logging.INFO, logger="zerolm.train.loop")
    res = pretrain(_cfg(out, "train.max_steps=8", "train.save_every=2", "train.keep_checkpoints=3",
                        *FAST), resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(bad) in w and "resuming from the checkpoint before it" in w
               for w in warnings), warnings
    assert "resumed from" in caplog.text and "step-00000004 at step 4" in caplog.text
    assert res.step == 8 and _steps(out) == list(range(1, 9))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_stops_the_resume_when_configured(run_with_three_checkpoints,
                                                                       tmp_path, damage):
    out = tmp_path / "run"
    shutil.copytree(run_with_three_checkpoints, out)
    name, spoil = DAMAGE[damage]
    bad = out / "checkpoints" / "step-00000006" / name
    spoil(bad)
    before = _snapshot(out)
    cfg = _cfg(out, "train.max_steps=8", "train.resume_bad_checkpoint=stop", *FAST)
    with pytest.raises(CheckpointError) as e:
        pretrain(cfg, resume=True)
    assert str(e.value).startswith(str(bad)) and "resume_bad_checkpoint" in str(e.value)
    assert _snapshot(out) == before  # nothing deleted or rewritten


# --------------------------------------------------------- atomic directories


def test_a_failed_directory_write_leaves_the_old_one_intact(tmp_path):
    d = tmp_path / "best"
    with AtomicDir(d) as t:
        (t / "model.safetensors").write_text("old")
    with pytest.raises(RuntimeError), AtomicDir(d) as t:
        (t / "model.safetensors").write_text("new, half written")
        raise RuntimeError("disk full")
    assert (d / "model.safetensors").read_text() == "old"
    assert _visible(tmp_path) == ["best"] and len(list(tmp_path.iterdir())) == 1  # no leftovers


@pytest.mark.skipif(atomic._renameat2() is None, reason="renameat2 is Linux-only")
def test_replacing_a_directory_never_leaves_neither(tmp_path, monkeypatch):
    d = tmp_path / "final"
    with AtomicDir(d) as t:
        (t / "a").write_text("old")
    seen = []

    def watch(fn):
        def wrapped(*args):
            result = fn(*args)
            seen.append(d.is_dir())  # after every rename-like step
            return result
        return wrapped

    monkeypatch.setattr(atomic, "_exchange", watch(atomic._exchange))
    monkeypatch.setattr(atomic.os, "replace", watch(os.replace))
    with AtomicDir(d) as t:
        (t / "a").write_text("new")
    assert (d / "a").read_text() == "new" and seen and all(seen)


_CRASH = textwrap.dedent("""
    import os, sys
    from zerolm import atomic
    atomic._exchange = lambda a, b: False  # a filesystem without RENAME_EXCHANGE
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if ".old-" in str(dst):
            os._exit(9)  # killed between the two renames

    os.replace = replace
    with atomic.AtomicDir(sys.argv[1]) as t:
        (t / "a").write_text("new")
""")


def test_a_crash_between_two_renames_is_repaired_by_the_next_reader(tmp_path):
    ck = tmp_path / "checkpoints" / "step-00000004"
    best = tmp_path / "run" / "best"
    for d in (ck, best):
        with AtomicDir(d) as t:
            (t / "a").write_text("old")
        proc = subprocess.run([sys.executable, "-c", _CRASH, str(d)], env=_env())
        assert proc.returncode == 9 and not d.exists()  # the moment the fallback cannot avoid
    assert list_checkpoints(ck.parent) == [ck] and (ck / "a").read_text() == "old"
    with open_run_dir(best.parent, resume=str(ck), overwrite=False):  # a resume from a given checkpoint
        assert (best / "a").read_text() == "old"
    assert _visible(ck.parent) == ["step-00000004"] and len(list(ck.parent.iterdir())) == 1
    recover_dir(best)  # nothing left to do: no error, nothing changed
    assert sorted(p.name for p in best.parent.iterdir()) == [".lock", "best"]


def test_atomic_writes_reach_the_disk_before_they_are_visible(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the synced files")
    monkeypatch.setattr(atomic.os, "fsync", fsync)
    atomic_write_text(tmp_path / "eval.json", "{}")
    with AtomicDir(tmp_path / "best") as t:
        (t / "model.safetensors").write_text("w")
        tmp = t
    assert any(Path(p).parent == tmp_path and ".eval.json." in p for p in synced)  # the data
    assert Path(str(tmp / "model.safetensors")) in [Path(p) for p in synced]
    assert [Path(p) for p in synced].count(tmp_path) >= 2  # the renames, once per write


# --------------------------------------------------------------------- disk use


def test_a_finished_run_keeps_only_best_with_the_lean_settings(tmp_path, caplog):
    common = ["train.max_steps=4", "train.save_every=2", "train.eval_every=2", *FAST]
    full = pretrain(_cfg(tmp_path / "full", *common))
    caplog.set_level(logging.INFO, logger="zerolm.train.loop")
    lean = pretrain(_cfg(tmp_path / "lean", *common, "train.keep_final=false",
                         "train.keep_checkpoints_when_done=false"))
    assert _visible(lean.out_dir) == ["best", "config.yaml", "loss.png", "metrics.jsonl",
                                      "run.json", "tokenizer"]
    assert disk_usage(lean.out_dir) < disk_usage(full.out_dir) / 3
    kept = [r.getMessage() for r in caplog.records if "kept in" in r.getMessage()]
    assert len(kept) == 1 and "best/" in kept[0] and "final/" not in kept[0]
    assert "checkpoints/" not in kept[0]  # deleted, so not listed


def test_an_interrupted_lean_run_keeps_its_checkpoints_until_it_finishes(tmp_path):
    cfg = _cfg(tmp_path / "run", "train.max_steps=6", "train.save_every=0", "train.eval_every=3",
               "train.keep_final=false", "train.keep_checkpoints_when_done=false", *FAST)

    def stop_at_2(trainer, step, row):
        if step == 2:
            trainer.request_stop()

    first = pretrain(cfg, callbacks=[stop_at_2])
    assert first.interrupted and (first.out_dir / "checkpoints" / "step-00000002").is_dir()
    assert not (first.out_dir / "final").exists()
    resumed = pretrain(cfg, resume=True)
    assert resumed.step == 6 and not (resumed.out_dir / "checkpoints").exists()
    assert (resumed.out_dir / "best" / "model.safetensors").exists()


def test_clean_frees_a_finished_runs_checkpoints_and_refuses_an_interrupted_run(tmp_path, capsys):
    res = pretrain(_cfg(tmp_path / "run", "train.max_steps=4", "train.save_every=2",
                        "train.eval_every=2", *FAST))
    out = res.out_dir
    before = _snapshot(out)
    assert main(["clean", str(out), "--keep", "best", "--dry-run"]) == 0
    said = capsys.readouterr().out
    assert f"would remove {out / 'checkpoints'}/" in said and f"{out / 'final'}/" in said
    assert _snapshot(out) == before
    ck_size, final_size = disk_usage(out / "checkpoints"), disk_usage(out / "final")
    assert main(["clean", str(out), "--keep", "best"]) == 0
    said = capsys.readouterr().out
    from zerolm.train.rundir import format_size

    assert f"freed {format_size(ck_size + final_size)}" in said
    assert not (out / "checkpoints").exists() and not (out / "final").exists()
    assert (out / "best" / "model.safetensors").exists()

    def stop_at_1(trainer, step, row):
        trainer.request_stop()

    stopped = pretrain(_cfg(tmp_path / "stopped", "train.max_steps=4", *FAST),
                       callbacks=[stop_at_1])
    assert main(["clean", str(stopped.out_dir)]) == 2
    assert "interrupted at step 1 of 4" in capsys.readouterr().err
    assert (stopped.out_dir / "checkpoints" / "step-00000001").is_dir()


def test_without_an_evaluation_final_is_written_even_when_not_kept(tmp_path):
    from zerolm.data.lm import CausalLMBatches
    from zerolm.models import ModelConfig, build_model
    from zerolm.tasks import CausalLMTask
    from zerolm.train.loop import Trainer

    cfg = _cfg(tmp_path / "run", "train.max_steps=2", "train.keep_final=false",
               "train.keep_checkpoints_when_done=false", *FAST)
    model = build_model(ModelConfig(family="gpt", vocab_size=11, d_model=16, n_layers=1, n_heads=2,
                                    d_ff=24, max_seq_len=8))
    data = CausalLMBatches(torch.arange(200).remainder(11).numpy(), 8, 4, seed=0)
    trainer = Trainer(model, CausalLMTask(), data, train=cfg.train, optim=cfg.optim,
                      schedule=cfg.schedule, out_dir=tmp_path / "run")
    trainer.fit()
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_of_a_finished_run_without_checkpoints_refuses_instead_of_mixing(tmp_path):
    """A finished fine-tune keeps best/ only: --resume must not start a new run on top of it."""
    from zerolm.config import FinetuneConfig
    from zerolm.errors import ZeroLMError
    from zerolm.train.finetune import finetune

    cfg = load_config(REPO / "configs/tiny/classify_reviews.yaml",
                      [f"out_dir={tmp_path / 'run'}", "train.max_steps=2", "train.progress=false"],
                      cls=FinetuneConfig)
    finetune(cfg)
    before = _snapshot(tmp_path / "run")
    with pytest.raises(ZeroLMError, match="nothing to resume.*finished at step 2.*--overwrite"):
        finetune(cfg, resume=True)
    assert _snapshot(tmp_path / "run") == before


def test_written_files_and_directories_get_the_usual_modes_not_private_ones(tmp_path):
    """Atomic writes go through mkstemp / mkdtemp (0600 / 0700); what lands must be readable
    as a plain open() / mkdir would leave it, or a model handed to a service cannot be read."""
    import os
    import stat

    from zerolm.atomic import AtomicDir, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        with AtomicDir(tmp_path / "model") as d:
            atomic_write_text(d / "config.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "model" / "config.json").stat().st_mode) == 0o644
