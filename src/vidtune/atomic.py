"""Atomic writes: every output a later step trusts appears complete or not at all.

A killed process leaves at most a ``.<name>.tmp-<host>-<pid>-*`` sibling, which no step reads; the next
write of the same output removes it (:func:`remove_stale_temporaries`), so kills leave no litter behind.

Fault injection (tests/test_faults.py, docs/faults.md): with ``VIDTUNE_FAULT_KILL_BEFORE_RENAME`` set, a
process about to publish an output whose path ends with that value SIGKILLs itself instead, as a node failure
at the worst moment would. Unset, as always outside the fault tests, it costs one environment lookup.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from vidtune.errors import DataError


STALE_AFTER_S = 24 * 3600  # a temporary from another host is only removed when this old
_HOST = socket.gethostname()


def temp_sibling(path: Path, directory: bool = False) -> Path:
    """A new hidden file (or folder) beside ``path``, named for this host and process; stale ones go first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    prefix = f".{path.name}.tmp-{_HOST}-{os.getpid()}-"
    if directory:
        temp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        temp = Path(name)
    os.chmod(temp, (0o777 if directory else 0o666) & ~_umask())  # mkstemp/mkdtemp make them private
    return temp


def remove_stale_temporaries(path: Path) -> None:
    """Remove ``path``'s temporary siblings whose process is gone (or, from another host, old ones)."""
    for temp in path.parent.glob(f".{path.name}.tmp-*"):
        try:
            host, pid, _ = temp.name.rsplit(".tmp-", 1)[1].rsplit("-", 2)
            if host == _HOST and _alive(int(pid)):
                continue
            if host != _HOST and time.time() - temp.stat().st_mtime < STALE_AFTER_S:
                continue
        except (ValueError, OSError):
            pass
        if temp.is_dir() and not temp.is_symlink():
            shutil.rmtree(temp, ignore_errors=True)
        else:
            temp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fault_point(target: Path) -> None:
    suffix = os.environ.get("VIDTUNE_FAULT_KILL_BEFORE_RENAME")
    if suffix and str(target).endswith(suffix):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path; on success it is renamed to ``path``, on error removed."""
    target = Path(path)
    temp = temp_sibling(target)
    try:
        yield temp
        _fsync_file(temp)
        _fault_point(target)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` (a previous folder is removed first)."""
    target = Path(path)
    temp = temp_sibling(target, directory=True)
    try:
        yield temp
        _fault_point(target)
        if target.exists():
            shutil.rmtree(target)
        os.replace(temp, target)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def dumps_json(data: Any) -> str:
    """The one JSON layout vidtune writes: sorted keys, two-space indent, UTF-8, trailing newline."""
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    write_text(path, dumps_json(data))


def write_jsonl(path: str | os.PathLike, records: Iterator[dict] | list[dict]) -> int:
    """Write one compact JSON object per line (key order kept); returns the number of lines."""
    count = 0
    with atomic_path(path) as temp, open(temp, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


# The readers of the two file kinds vidtune reads and writes: every step and script reads JSON and JSON Lines
# through them, so a broken file fails naming the file and the line. ``fix`` says what to do about it (by
# default: the file is one of vidtune's outputs).
RERUN = "rerun the step that wrote it (a killed job or a full disk can leave a file cut short)"


def read_jsonl(path: str | os.PathLike, fix: str = RERUN) -> list[dict]:
    """The records of a JSON Lines file (blank lines skipped); a line that is not JSON fails naming it."""
    records = []
    with _opened(path, fix) as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise DataError(f"not valid JSON: {error.msg} at column {error.colno}", file=str(path),
                                    record=f"line {number}", fix=fix) from None
    return records


def read_json(path: str | os.PathLike, fix: str = RERUN) -> Any:
    """A whole JSON file; a syntax error fails naming the file and the line."""
    with _opened(path, fix) as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise DataError(f"not valid JSON: {error.msg} at column {error.colno}", file=str(path),
                            record=f"line {error.lineno}", fix=fix) from None


@contextlib.contextmanager
def _opened(path: str | os.PathLike, fix: str) -> Iterator:
    try:
        with open(path, encoding="utf-8") as handle:
            yield handle
    except UnicodeDecodeError as error:
        raise DataError(f"not UTF-8 text ({error.reason})", file=str(path), fix="re-encode the file as UTF-8") \
            from None
