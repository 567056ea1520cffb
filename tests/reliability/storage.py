"""Storage faults: unwritable files and directories, a tiny filesystem to fill and free."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """Make a file or directory unwritable for this process and its children.

    As root, permission bits do not stop writes, so the immutable attribute does; else
    the write bits are removed. Restored on exit. Raises RuntimeError when neither works.
    """
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"chattr +i {path} failed: {done.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
    else:
        mode = path.stat().st_mode
        path.chmod(mode & ~0o222)
        try:
            yield
        finally:
            path.chmod(mode)


@contextlib.contextmanager
def tiny_filesystem(where: Path, size: str = "16m") -> Iterator[bool]:
    """Mount a tmpfs of `size` at `where` when this process may mount (yields True), else
    leave `where` a plain directory (yields False). Unmounted on exit."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(where)],
        capture_output=True,
    )
    if done.returncode != 0:
        yield False
        return
    try:
        yield True
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(directory: Path) -> Path:
    """Fill the filesystem holding `directory` with a ballast file; return it (delete it to
    give the space back)."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return ballast
