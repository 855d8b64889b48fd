"""Atomic writes: a file or a whole directory appears complete or not at all.

Everything zerolm writes that a later run or a user reads (checkpoints, model
directories, reports, predictions) goes through here, so a crash or a full disk never
leaves half a file in place of a good one.

What "complete" means here: the data is fsync'ed before the rename that publishes it,
and the parent directory is fsync'ed after it, so a power loss cannot publish a name
whose data is still in the page cache. Replacing an existing directory (best/, final/,
a checkpoint) swaps old and new in one step with renameat2(RENAME_EXCHANGE) on Linux;
elsewhere it takes two renames, and `recover_dir` puts the old directory back if a crash
fell between them.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 1 << 1  # <linux/fs.h>
# what a write leaves beside NAME if it is killed: `.NAME.tmp-PID-xxxx` (being written, or
# the old directory after an exchange) and `.NAME.old-PID` (the old one between two renames)
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)(?:-[^.]*)?")


def _umask() -> int:
    """The process's umask (read without changing it where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, hence the fallback only)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a synced temporary sibling and a rename. The file gets
    the mode a plain open() would give it (0666 less the umask), not mkstemp's private 0600:
    model files are meant to be handed to other users and services."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a synced temporary sibling and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


class AtomicDir:
    """`with AtomicDir(final) as tmp:` write into tmp; on success tmp replaces final.

    If the body raises, tmp is removed and `final` is untouched. On Linux there is no
    moment when neither the old nor the new directory is at `final`; where the two
    directories cannot be exchanged in one step, `recover_dir` repairs that moment.
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        recover_dir(self.final)
        # the PID in the name lets recover_dir tell a dead writer's leftovers from a live one's
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.tmp-{os.getpid()}-",
                                         dir=self.final.parent))
        self.tmp.chmod(0o777 & ~_umask())  # as mkdir would make it, not mkdtemp's private 0700
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            _fsync_tree(self.tmp)
            replace_dir(self.tmp, self.final)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise


def replace_dir(new: Path, final: Path) -> None:
    """Move directory `new` to `final`, replacing what is there; `new` is gone afterwards."""
    parent = final.parent
    if not os.path.lexists(final):
        os.replace(new, final)
        _fsync_dir(parent)
        return
    if _exchange(new, final):
        _fsync_dir(parent)
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old directory
        return
    # two renames: a crash between them leaves only `.NAME.old-PID`; recover_dir restores it
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    os.replace(final, old)
    try:
        os.replace(new, final)
    except BaseException:
        os.replace(old, final)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> None:
    """Put right what an interrupted AtomicDir left beside `path`: if `path` is missing
    but an old copy survives as `.NAME.old-PID`, rename it back; then delete temporary
    and old copies whose writer is gone. Leftovers of a live writer are not touched."""
    path = Path(path)
    _recover(path.parent, only=path.name)


def recover_all(directory: str | os.PathLike) -> None:
    """`recover_dir` for every entry of `directory` (e.g. all checkpoints of a run)."""
    _recover(Path(directory), only=None)


def _recover(parent: Path, only: str | None) -> None:
    try:
        entries = list(parent.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    found: dict[str, list[tuple[str, Path]]] = {}
    for p in entries:
        m = _LEFTOVER.fullmatch(p.name)
        if m is None or (only is not None and m["name"] != only):
            continue
        pid = int(m["pid"])
        # a PID equal to ours is a dead writer's whose PID we inherited (PID 1 in a container
        # restarted after a crash); this process writes one directory of a name at a time
        if pid != os.getpid() and _pid_alive(pid):
            continue
        found.setdefault(m["name"], []).append((m["kind"], p))
    for name, items in found.items():
        target = parent / name
        olds = sorted((p for kind, p in items if kind == "old"), key=lambda p: p.stat().st_mtime)
        if olds and not os.path.lexists(target):
            old = olds.pop()
            os.replace(old, target)
            _fsync_dir(parent)
            log.warning("restored %s from %s (a write replacing it was interrupted)", target,
                        old.name)
        for _, p in items:
            if not os.path.lexists(p):
                continue
            log.info("removing %s, left by an interrupted write of %s", p, target)
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


@functools.cache
def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one step; False where the kernel or filesystem cannot."""
    fn = _renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    # ENOSYS: old kernel; EINVAL / EOPNOTSUPP: the filesystem has no exchange (some FUSE, NFS)
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # a platform that cannot open directories (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the rename still happened
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, deepest first."""
    for dirpath, _, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))

