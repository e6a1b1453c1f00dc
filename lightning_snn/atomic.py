"""Files written whole or not at all: temporary names that say who writes them, the clean-up of
temporary files whose writer died, and the recognition of a full disk.

A writer writes ``.<name>.<pid>@<host>.<suffix>`` beside the target and moves it into place with
``os.replace``. A writer killed in the middle (``kill -9``, a node failure) leaves that file behind;
the next writer in the folder removes it when its process is gone (``remove_stale_temps``). Files
of another host are left alone: a process id means nothing across machines sharing a file system.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
from pathlib import Path
from typing import Any

_HOST = socket.gethostname()
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(?:@(?P<host>[^/]*))?\.(?P<suffix>[a-z]+)$")
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def temp_path(target: str | os.PathLike, suffix: str = "tmp") -> Path:
    """The hidden temporary file this process writes ``target`` through."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}@{_HOST}.{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, suffixes: tuple[str, ...] = ("tmp",)) -> list[Path]:
    """Delete the temporary files in ``folder`` (written through :func:`temp_path`, or the same name
    without ``@host``) whose writer, a process of this host, no longer exists; returns them."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        m = _TEMP.match(path.name)
        if not m or m["suffix"] not in suffixes or (m["host"] is not None and m["host"] != _HOST):
            continue
        pid = int(m["pid"])
        if pid != os.getpid() and not _alive(pid) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def no_space(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from is a full disk (or quota) ``OSError``:
    torch reports a failed write as a ``RuntimeError`` raised while handling the ``OSError``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_SPACE:
            return True
        e = e.__cause__ or e.__context__
    return False


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (a reader sees the old file or the new one)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_destination(path: Path, overwrite: bool) -> None:
    """Fail before anything is written: ``path`` is a folder, exists (without ``overwrite``), or
    lies under a file or a folder that cannot be written."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder (valid: the path of a .beton file to write)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    parent = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == p.parent)
    if not parent.is_dir():
        raise NotADirectoryError(f"cannot write {path}: {parent} is a file, not a folder "
                                 "(valid: a path under a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: folder {parent} is not writable")
