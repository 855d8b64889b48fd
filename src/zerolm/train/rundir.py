"""Run directories: one run at a time, and never a new run on top of an old run's files.

The training entry points call `open_run_dir` first (after `dist.setup`, before anything
is written), and keep it open for the whole run:

    with open_run_dir(cfg.out_dir, resume=resume, overwrite=overwrite):
        ...train...

A used directory (one holding anything a run writes: checkpoints/, best/, final/,
metrics.jsonl...) is refused unless the run resumes it or overwrites it, so two runs'
checkpoints, metrics and models never mix. An exclusive lock (`flock` on `.lock`, which
holds the PID and host for the message) keeps a second process off the directory while a
run is in it; the kernel drops the lock when the process dies, so a crash leaves no lock
to clean up.

`clean_run` is what `zerolm clean` does: delete what a finished run no longer needs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from zerolm.atomic import recover_all
from zerolm.errors import ConfigError, ZeroLMError
from zerolm.train import dist
from zerolm.train.checkpoint import list_checkpoints

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
RUN_STATE = "run.json"  # written by the loop when fit ends: finished, stopped early or interrupted
# what runs write into their directory: --overwrite removes these, and nothing else
RUN_OUTPUTS = ("checkpoints", "best", "final", "tokenizer", "metrics.jsonl", "eval.json",
               "config.yaml", "task.json", RUN_STATE,
               "general", "kd_baseline", "distill.json")  # distillation's stages and report
RUN_OUTPUT_SUFFIXES = (".png",)  # plots: loss.png, confusion.png, entities.png...


@dataclass
class RunDir:
    """An open run directory; closing it (or leaving the `with` block) drops the lock."""

    path: Path
    removed: list[str] = field(default_factory=list)  # what --overwrite removed ("best/ (87 MB)")
    _fd: int | None = None  # the locked .lock file (rank 0 only)

    def close(self) -> None:
        if self._fd is not None:
            _unlock(self._fd)
            self._fd = None

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()


def open_run_dir(out_dir: str | os.PathLike, *, resume: bool | str, overwrite: bool,
                 stages: tuple[str, ...] = ()) -> RunDir:
    """Lock `out_dir` for this run and check it may be used (see the module docstring).

    A used directory needs `resume` (True, or a checkpoint path) or `overwrite`, which
    deletes what the earlier run wrote (its tokenizer/ too, so that a new tokenizer
    setting is not silently ignored) and logs each entry removed. Under torchrun rank 0
    checks and locks, and every rank raises the same error if it refuses. `stages` names
    subdirectories that hold runs of earlier or later stages (distillation's general/):
    their checkpoints, or a stage that ended, give a resume something to continue.
    """
    path = Path(out_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: pass one of them")
    run = RunDir(path)
    error: Exception | None = None
    if dist.is_main():
        try:
            _open(run, resume=resume, overwrite=overwrite, stages=stages)
        except Exception as e:
            if not dist.is_distributed():
                raise
            error = e  # raised below, once the other ranks know: they must not wait forever
    # a collective: the other ranks wait here until rank 0 has checked and locked
    failure = dist.broadcast_object(None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    if failure is not None:
        raise ConfigError(failure[1]) if failure[0] == "ConfigError" else ZeroLMError(failure[1])
    return run


def _open(run: RunDir, *, resume: bool | str, overwrite: bool, stages: tuple[str, ...] = ()) -> None:
    path = run.path
    if path.exists() and not path.is_dir():
        raise ZeroLMError(f"out_dir {path} is a file, not a directory: choose another out_dir")
    path.mkdir(parents=True, exist_ok=True)
    run._fd = _lock(path)
    try:
        recover_all(path)  # put back best/ or final/ if a crash fell inside their replacement
        used = _entries(path)
        if not used:
            return
        if resume:
            # a run of stages continues after any stage that ran (a later one may be pending;
            # when none is, the resume re-runs nothing)
            staged = bool(stages) and (read_run_state(path) is not None or any(
                list_checkpoints(path / s / "checkpoints") or read_run_state(path / s) for s in stages))
            if resume is True and not list_checkpoints(path / "checkpoints") and not staged:
                state = read_run_state(path)
                what = f"its run {state['status']} at step {state['step']}" if state else "it"
                raise ZeroLMError(f"{path}: nothing to resume: {what} kept no resumable checkpoint "
                                  f"(finished fine-tunes keep best/ only). Pass --overwrite to start "
                                  f"again there, or choose another out_dir")
            return
        if not overwrite:
            raise ZeroLMError(f"{path} already holds a run ({_names(used)}): pass --resume to "
                              f"continue it, --overwrite to delete it and start again, or choose "
                              f"another out_dir")
        foreign = [p for p in used if not is_run_output(p)]
        if foreign:
            raise ZeroLMError(f"{path}: --overwrite deletes only what a run writes, and this "
                              f"directory also holds {_names(foreign)}: move those elsewhere or "
                              f"choose another out_dir (nothing was deleted)")
        for p in used:
            run.removed.append(f"{_name(p)} ({format_size(disk_usage(p))})")
            _remove(p)
        log.info("--overwrite: removed from %s: %s", path, ", ".join(run.removed))
    except BaseException:
        run.close()
        raise


def is_run_output(p: Path) -> bool:
    return p.name in RUN_OUTPUTS or p.suffix in RUN_OUTPUT_SUFFIXES


def lock_holder(out_dir: str | os.PathLike) -> str | None:
    """"PID 123 on host" when a live process holds the run directory's lock, else None."""
    lock = Path(out_dir) / LOCK_FILE
    if not lock.exists():
        return None
    fd = os.open(lock, os.O_RDONLY)  # flock needs no write access
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return _holder_text(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _lock(path: Path) -> int:
    # no O_TRUNC: the holder's PID must survive our failed attempt, for the message
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = _holder_text(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise ZeroLMError(f"{path / LOCK_FILE}: cannot lock the run directory "
                              f"({e.strerror})") from None
        raise ZeroLMError(f"{path} is in use by another run ({holder}): wait for it to end or stop "
                          f"it, or choose another out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return fd


def _unlock(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)  # the file stays: deleting it would let two runs lock two files
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _holder_text(fd: int) -> str:
    # the holder writes its PID just after it locks: give it a moment if we came in between
    for _ in range(20):
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        if text:
            pid, host = text[0], (text[1] if len(text) > 1 else "?")
            return f"PID {pid} on {host}"
        time.sleep(0.05)
    return "PID unknown"


def _entries(path: Path) -> list[Path]:
    """What is in the directory, hidden files (the lock, editor files) aside."""
    return sorted(p for p in path.iterdir() if not p.name.startswith("."))


def _name(p: Path) -> str:
    return p.name + ("/" if p.is_dir() else "")


def _names(paths: list[Path], limit: int = 8) -> str:
    shown = ", ".join(_name(p) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def disk_usage(path: str | os.PathLike) -> int:
    """Bytes that `path` (a file, or a directory and everything under it) takes on disk."""
    path = Path(path)
    if not os.path.lexists(path):
        return 0
    if not path.is_dir() or path.is_symlink():
        return _allocated(path)
    total = 0
    for dirpath, _, files in os.walk(path):
        total += sum(_allocated(Path(dirpath) / f) for f in files)
    return total


def _allocated(p: Path) -> int:
    try:
        st = p.lstat()
    except FileNotFoundError:
        return 0
    # st_blocks: what the file really takes on disk (a sparse or tiny file differs from st_size)
    return st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size


def format_size(n: int) -> str:
    """Bytes as people read them: 0 B, 12 kB, 87 MB, 1.2 GB (powers of 1000, as `df -H`)."""
    if n < 1000:
        return f"{n} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 999.5 or unit == "TB":
            return f"{n:.1f} {unit}" if n < 9.95 else f"{n:.0f} {unit}"
    raise AssertionError("unreachable")


def read_run_state(out_dir: str | os.PathLike) -> dict | None:
    """run.json of a run directory (how its last fit ended), None when absent or unreadable."""
    try:
        state = json.loads((Path(out_dir) / RUN_STATE).read_text())
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def clean_run(run_dir: str | os.PathLike, *, keep: Literal["best", "final", "both"] = "both",
              dry_run: bool = False) -> list[tuple[Path, int]]:
    """Delete what a finished run no longer needs: its resumable checkpoints, and final/
    (keep="best") or best/ (keep="final"). Returns (path, bytes) of each entry removed (or,
    with `dry_run`, that would be). Refuses a run that is in progress or was interrupted,
    and one that would be left with no model."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ZeroLMError(f"{path}: run directory not found")
    holder = lock_holder(path)
    if holder is not None:
        raise ZeroLMError(f"{path} is in use by a run ({holder}): clean it after that run ends")
    fd = None if dry_run else _lock(path)
    try:
        if not dry_run:
            recover_all(path)
        best, final = path / "best", path / "final"
        if not best.is_dir() and not final.is_dir():
            raise ZeroLMError(f"{path}: no best/ or final/ model, so nothing can be cleaned (the "
                              f"run has not finished, or this is not a zerolm run directory)")
        state = read_run_state(path)
        if state is not None and state.get("status") == "interrupted":
            raise ZeroLMError(f"{path}: the run was interrupted at step {state.get('step')} of "
                              f"{state.get('max_steps')}; its checkpoints are what --resume "
                              f"continues from. Resume it first, or delete "
                              f"{path / 'checkpoints'} yourself")
        if state is None:
            log.warning("%s has no %s (older runs did not write one): taking the run as "
                        "finished because it has a model directory", path, RUN_STATE)
        if keep != "both" and not (path / keep).is_dir():
            other = "final" if keep == "best" else "best"
            raise ZeroLMError(f"{path}: --keep {keep}, but the run has no {keep}/ model: use "
                              f"--keep {other} or --keep both (nothing was deleted)")
        targets = [path / "checkpoints"]
        targets += [d for d in (best, final) if keep not in ("both", d.name)]
        removed = [(p, disk_usage(p)) for p in targets if os.path.lexists(p)]
        if not dry_run:
            what = ", ".join(f"{_name(p)} ({format_size(n)})" for p, n in removed) or "nothing"
            for p, _ in removed:
                _remove(p)
            log.info("removed from %s: %s", path, what)
        return removed
    finally:
        if fd is not None:
            _unlock(fd)
