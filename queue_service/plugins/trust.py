"""Who may change the code a plugin runs: sshd-style StrictModes checks.

The service runs a plugin's entrypoint with its own rights, so anyone who can
write the entrypoint, its plugin folder or the plugin dir holding that folder can
run code as the service. Each of those paths must be owned by root or by the user
the service runs as, and must not be writable by group or others (a sticky bit
does not help: a 1777 plugin dir still lets anyone add a plugin folder).
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path


def ownership_problem(path: Path, what: str) -> str | None:
    """Why `path` cannot be trusted (one line naming it), or None when it can.

    `what` names the path's role ("plugin dir", "plugin folder", "entrypoint").
    A path that cannot be inspected is reported as such.
    """
    try:
        info = path.stat()
    except OSError as exc:
        return f"cannot inspect {what} {path}: {exc.strerror or exc}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        return (
            f"{what} {path} is writable by group or others (mode {mode:04o}); "
            f"refusing it (chmod go-w {path})"
        )
    service_uid = os.geteuid()
    if info.st_uid not in (0, service_uid):
        return (
            f"{what} {path} is owned by uid {info.st_uid}, not by root or the user the "
            f"service runs as ({_user(service_uid)}); refusing it"
        )
    return None


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except KeyError:
        return f"uid {uid}"
