"""One fast network probe, shared by everything that may try to go online.

Libraries that reach a service (the model hub, wandb) retry a dead host for tens of seconds or
minutes; a plain TCP connect with a short timeout tells in seconds whether to try at all.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def host_reachable(url: str, timeout_s: float = 3.0) -> bool:
    """True when ``url``'s host accepts a TCP connection within ``timeout_s``."""
    parts = urlsplit(url)
    if not parts.hostname:
        return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False
