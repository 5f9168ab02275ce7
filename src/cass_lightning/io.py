"""Files a crash cannot leave half written, JSON read with named errors, and one network probe.

Every file a user may later rely on (checkpoints, exports, run metadata, reports) is written by
:func:`atomic_write`: a hidden temporary file in the target's own folder, flushed and fsynced,
renamed over the target (atomic on POSIX), then the folder fsynced so the rename itself survives
a power loss. A reader sees the old file or the complete new one, never half of it; a kill
leaves at most a hidden ``.<name>.<random>.tmp`` that never looks like a result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

#: Temporary files end in this suffix (never ``.ckpt``/``.json``), so no glob or Lightning's
#: ``last*.ckpt`` lookup ever mistakes an unfinished write for a finished file.
TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))


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
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """``data`` as indented JSON with a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """The JSON in ``path``; a ``ValueError`` naming the file (and ``what`` it should be) when
    it is not valid JSON, rather than a bare ``JSONDecodeError``."""
    file = Path(path)
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not a valid {what} (not JSON: {err})") from err


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
