"""Atomic writes: a temporary file of its own, fsync, rename (no torch: the tools that only read
or write JSON import this without starting torch).

A reader, or a rerun after kill -9, sees the old file or the new one, never a torn one. The
temporary name is unique per process (`<path>.<pid>-<random>.tmp`), so two writers never share
one, and the temporary files of dead processes are removed by the next write. A full disk raises
DiskFull, one line, after removing the temporary file.
"""
import errno
import glob
import json
import os
import shutil
import uuid

from .errors import CPGError


def _fsync_dir(path):
    """Make a rename in `path`'s folder durable (a kill -9 or power loss then keeps it)."""
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_disk_full(exc):
    """True when `exc` or an exception it chains is 'no space left' (torch.save reports a full
    disk as a RuntimeError whose context is the OSError)."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class DiskFull(CPGError):
    """A write ran out of space; the temporary file is gone and the old file is intact."""

    def __init__(self, path, needed=None):
        folder = os.path.dirname(os.path.abspath(path))
        try:
            free = f'{shutil.disk_usage(folder).free / 2 ** 20:.1f} MB free'
        except OSError:
            free = 'free space unknown'
        size = f'about {needed / 2 ** 20:.1f} MB' if needed else 'more space'
        super().__init__(f'no space left on the device writing {path}: it needs {size}, {free} in '
                         f'{folder}; free some space and rerun (what was saved before is intact)')


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _remove_stale_temps(path):
    """Temp files of `path` left by a process that no longer runs (kill -9 while writing)."""
    for tmp in glob.glob(glob.escape(path) + '.*.tmp'):
        pid = os.path.basename(tmp)[len(os.path.basename(path)) + 1:].split('-')[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove_quietly(tmp)
        except OSError:   # alive under another user: not ours to remove
            pass


def atomic_write(path, write, size_hint=None):
    """Write `path` through write(file object) into a temp file, fsync it, rename it into place.

    A reader (or a rerun after kill -9) sees the old file or the new one, never a torn one. The
    temp file's name is unique per process (`<path>.<pid>-<random>.tmp`), so two writers never
    share one; temp files of dead processes are removed first. A full disk raises DiskFull (one
    line; `size_hint`: the bytes the file needs) after removing the temp file.
    """
    _remove_stale_temps(path)
    tmp = f'{path}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp'
    try:
        with open(tmp, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _remove_quietly(tmp)
        if is_disk_full(exc):
            raise DiskFull(path, size_hint) from None
        raise
    _fsync_dir(path)


def atomic_write_json(path, obj):
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + '\n').encode()))


def save_figure(fig, path, dpi):
    """A matplotlib figure to `path` (format from its extension), atomically; an unwritable path is
    one line (CPGError). The caller closes the figure."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fmt = os.path.splitext(path)[1][1:].lower() or 'png'
        atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    except OSError as exc:
        raise CPGError(f'cannot write {path}: {exc.strerror or exc}') from None
