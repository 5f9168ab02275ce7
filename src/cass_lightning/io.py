"""Files a crash cannot leave half written, files read without running code, JSON read with
named errors, and one network probe.

Every file a user may later rely on (checkpoints, exports, run metadata, reports) is written by
:func:`atomic_write`: a hidden temporary file in the target's own folder, flushed and fsynced,
renamed over the target (atomic on POSIX), then the folder fsynced so the rename itself survives
a power loss. A reader sees the old file or the complete new one, never half of it; a kill
leaves at most a hidden ``.<name>.<random>.tmp`` that never looks like a result. A write that the
disk refuses (full, read-only, no permission) raises :class:`WriteRefusedError`, naming the file.

Every torch file (checkpoint, ``.pth`` weights) is read by :func:`load_torch_file`, always with
``weights_only=True`` passed explicitly: a pickle that would run code is refused with the reason,
whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io as _io
import json
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

#: Temporary files end in this suffix (never ``.ckpt``/``.json``), so no glob or Lightning's
#: ``last*.ckpt`` lookup ever mistakes an unfinished write for a finished file.
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))


#: errno values that mean "this disk or folder takes no more writes": a named refusal, not a bug.
DISK_ERRNOS = {
    errno.ENOSPC: "no space left on the device",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "file too large (over the file-size limit, e.g. ulimit -f)",
}


class WriteRefusedError(OSError):
    """The disk refused a write (full, read-only, no permission); the message names the file."""


class UnreadableFileError(ValueError):
    """A checkpoint or weights file that cannot be read safely (truncated, not a torch file, or
    holding objects that only a code-running load could rebuild)."""


def disk_refusal(err: OSError, path: str | os.PathLike[str] | None = None) -> str | None:
    """A one-line explanation when ``err`` is the disk refusing a write, else ``None``."""
    reason = DISK_ERRNOS.get(err.errno or -1)
    if reason is None:
        return None
    where = path if path is not None else err.filename
    return (
        f"cannot write {where}: {reason} ({errno.errorcode.get(err.errno or 0, err.errno)}). "
        "Nothing already written was changed; free space, fix the folder's permissions or "
        "choose another output folder (paths.output_root), then start again"
    )


def temp_path_for(path: str | os.PathLike[str]) -> Path:
    """A unique hidden name next to ``path``: the same folder, so the final rename is atomic."""
    target = Path(path)
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def is_temp_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an unfinished write (named by :func:`temp_path_for`) of a killed run."""
    return _TEMP_NAME.fullmatch(Path(path).name) is not None


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename in ``folder`` durable; a no-op where directories cannot be fsynced."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(handle)`` on a fresh temporary file, then put it at ``path`` atomically.

    The temporary file is opened with mode ``xb``, so it gets the usual umask-based permissions
    (``tempfile.mkstemp`` would give 0600, unreadable by a group sharing the runs). On any
    exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    tmp = temp_path_for(target)
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        message = disk_refusal(err, target) if isinstance(err, OSError) else None
        if message is not None and not isinstance(err, WriteRefusedError):
            raise WriteRefusedError(err.errno, message, str(target)) from err
        raise
    fsync_dir(target.parent)
    return target


def first_free(name_for: Callable[[int], Path], start: int = 1) -> Path:
    """The first of ``name_for(start)``, ``name_for(start + 1)``, ... that does not exist: where
    an earlier file or folder is kept aside, or a new one written beside it, never over it."""
    n = start
    while (path := name_for(n)).exists():
        n += 1
    return path


def utc_timestamp() -> str:
    """Now, as recorded in run metadata: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON with a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


#: A cell starting with one of these is a formula to a spreadsheet (Excel, LibreOffice, Sheets):
#: ``=HYPERLINK(...)`` or ``=cmd|' -C calc'!A0`` would run when a colleague opens the CSV.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """``value`` as a CSV cell a spreadsheet shows as text: a string starting like a formula
    gets a leading ``'`` (OWASP's advice); numbers (including negative ones) stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(
    path: str | os.PathLike[str], header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> Path:
    """``header`` and ``rows`` as a CSV written atomically, every cell through
    :func:`spreadsheet_safe`: the one way this project writes a CSV."""
    buffer = _io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([spreadsheet_safe(cell) for cell in header])
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return atomic_write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """The JSON in ``path``; a ``ValueError`` naming the file (and ``what`` it should be) when
    it is not valid JSON, rather than a bare ``JSONDecodeError``."""
    file = Path(path)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not a valid {what} (not JSON: {err})") from err
    except RecursionError:
        raise ValueError(f"{file} is not a valid {what} (JSON nested too deeply)") from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex SHA-256 of a file, read in chunks (weights files can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_UNSAFE_GLOBAL = re.compile(
    r"Unsupported global: GLOBAL (\S+)|unsupported GLOBAL (\S+) whose module \S+ is blocked"
)
_WEIGHTS_ONLY_REASON = re.compile(
    r"WeightsUnpickler error:\s*(.*?)(?:\s*Please use|\s*Check the|$)", re.S
)


def _why_unreadable(err: BaseException) -> str:
    """What went wrong, in words, without torch's advice to retry with ``weights_only=False``
    (which would run whatever code a hostile file holds)."""
    text = str(err)
    found = _UNSAFE_GLOBAL.search(text)
    if found:
        return (
            f"it holds a Python object ({found.group(1) or found.group(2)}) that only a "
            "code-running load could "
            "rebuild; loading it that way would run whatever code the file holds"
        )
    if isinstance(err, EOFError) or "central directory" in text or "zip archive" in text:
        return "it is empty or truncated (an interrupted copy or write?)"
    if any(s in text for s in ("invalid load key", "Unsupported operand")) or isinstance(
        err, (KeyError, UnicodeDecodeError)
    ):
        return "it is not a torch file"
    found = _WEIGHTS_ONLY_REASON.search(text)
    if found and found.group(1).strip():
        reason = " ".join(found.group(1).split())[:200]
        return f"it holds objects a weights-only load refuses ({reason})"
    if "weights only load failed" in text.lower() or "weights_only" in text:
        # torch's own wording changes between versions; never pass on its advice to retry
        # with a code-running load
        return "it holds objects a weights-only load refuses"
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return f"torch could not read it ({first[:200]})"


def load_torch_file(path: str | os.PathLike[str], what: str = "checkpoint", **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True, **kwargs)``, with :class:`UnreadableFileError`
    naming the file and the reason when it cannot be read that way.

    ``weights_only=True`` is passed explicitly, so ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` cannot
    turn it off. ``mmap=True`` (in ``kwargs``) reads only what is touched.
    """
    import pickle

    import torch

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{what} not found: {file}")
    kwargs.setdefault("map_location", "cpu")
    failures = (pickle.UnpicklingError, RuntimeError, EOFError, KeyError, ValueError,
                UnicodeDecodeError, AttributeError, IndexError, TypeError)  # fmt: skip
    try:
        try:
            return torch.load(file, weights_only=True, **kwargs)
        except RuntimeError as err:
            if not kwargs.get("mmap") or "mmap can only be used" not in str(err):
                raise
            # Not a zip-format torch file: an old-format one can still be read without mmap.
            return torch.load(file, weights_only=True, **{**kwargs, "mmap": False})
    except failures as err:
        raise UnreadableFileError(
            f"{file} cannot be loaded as a {what}: {_why_unreadable(err)}. It was not loaded; "
            f"use a {what} written by cass-lightning (or torch.save of plain tensors)"
        ) from None


def host_reachable(url: str, timeout_s: float = 3.0) -> bool:
    """True when ``url``'s host accepts a TCP connection within ``timeout_s``.

    Libraries that reach a service (the model hub, wandb) retry a dead host for tens of seconds
    or minutes; a plain connect with a short timeout tells in seconds whether to try at all.
    """
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
