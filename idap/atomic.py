"""Whole-or-nothing writes: a file or a directory is replaced only by a complete new one.

Everything the library writes to a user's path goes through here: a file is written beside its target
and renamed over it; a directory is built in a hidden sibling and swapped in at the end. After any
failure (an exception, a full disk, a kill) the previous content is still there, whole; after a success
nothing of it remains. New files get the permissions the umask gives (``mkstemp`` would make them 0600,
and a serving process running as another user could not read them).

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with staged_directory(out) as tmp:
    ...     _ = (tmp / "report.json").write_text("{}")
    >>> sorted(p.name for p in out.iterdir())
    ['report.json']
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["replace_directory", "staged_directory", "write_file", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sibling(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_file(target: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, fsync it, then rename it over ``target``; on any error ``target`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(target, "tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def write_text(target: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    return write_file(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def finish_tree(directory: Path) -> None:
    """Before a rename makes ``directory`` visible: flush every file to disk and give files and folders the
    permissions the umask gives new ones (temporary names and some writers, safetensors among them, create
    0600/0700 entries that another user — a serving process — could not read)."""
    mask = _umask()
    for path in [directory, *directory.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            os.chmod(path, 0o666 & ~mask)
        elif path.is_dir():
            os.chmod(path, 0o777 & ~mask)


def replace_directory(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Rename the complete ``staging`` directory to ``target``; an old ``target`` is removed only afterwards.

    ``staging`` must be a sibling of ``target`` (same filesystem, so each rename is atomic).
    """
    staging, target = Path(staging), Path(target)
    finish_tree(staging)
    if not target.exists() and not target.is_symlink():
        os.replace(staging, target)
        return target
    retired = _sibling(target, "old")
    os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True) if retired.is_dir() else retired.unlink(missing_ok=True)
    return target


@contextlib.contextmanager
def staged_directory(target: str | os.PathLike, *, staging: str | os.PathLike | None = None,
                     keep_on_error: bool = False) -> Iterator[Path]:
    """Yield an empty (or given) staging directory beside ``target``; swap it in when the block succeeds.

    Args:
        staging: use this directory (a sibling of ``target``) instead of a fresh one — a resumable run
            keeps its work there between attempts.
        keep_on_error: leave the staging directory in place when the block raises (for a resume);
            by default it is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(staging) if staging is not None else _sibling(target, "tmp")
    if stage.parent.resolve() != target.parent.resolve():
        raise ValueError(f"staging directory {stage} must be a sibling of {target}")
    stage.mkdir(exist_ok=True)
    try:
        yield stage
    except BaseException:
        if not keep_on_error:
            shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_directory(stage, target)
