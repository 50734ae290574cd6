"""Which files a piece of code opens or lists, from CPython's audit hooks (PEP 578): the proof that a stage read
and wrote nothing outside its folders. A hook cannot be removed, so one is installed once and records only inside
`watching()`."""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

_seen: list[tuple[str, str]] | None = None
_thread: int | None = None  # only the watching thread's events: a thread left running by another test is not ours
_installed = False


def _hook(event: str, args: tuple) -> None:
    if _seen is None or threading.get_ident() != _thread:
        return
    if event not in ("open", "os.listdir", "os.scandir", "os.rename", "os.replace", "os.remove", "os.mkdir",
                     "shutil.rmtree", "os.symlink"):
        return
    path = args[0] if args else None
    # Relative names are shutil.rmtree's, resolved against a folder descriptor it opened by absolute path (which
    # was recorded); the code under test is given absolute paths only.
    if isinstance(path, (str, bytes, os.PathLike)) and os.path.isabs(os.fsdecode(path)):
        mode = args[1] if event == "open" and len(args) > 1 and isinstance(args[1], str) else ""
        _seen.append((event if not mode else f"open:{mode}", os.path.abspath(os.fsdecode(path))))


@contextmanager
def watching():
    """Yield the list of (event, absolute path) the block touches."""
    global _seen, _thread, _installed
    if not _installed:
        sys.addaudithook(_hook)
        _installed = True
    _seen, _thread = (found := []), threading.get_ident()
    try:
        yield found
    finally:
        _seen = None


def outside(found: list[tuple[str, str]], *allowed: Path) -> list[tuple[str, str]]:
    """The touched paths outside `allowed` folders, ignoring Python's own reads (imports, /proc, /dev, temp)."""
    roots = [os.path.abspath(a) for a in allowed]
    ignore = [os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, "/proc", "/dev", "/sys", "/usr", "/etc/ssl")]
    bad = []
    for event, path in found:
        if any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots):
            continue
        if event.startswith("open") and "w" not in event and "a" not in event and \
                any(path.startswith(i + os.sep) for i in ignore):
            continue
        if path.endswith((".py", ".pyc", ".so")) or "__pycache__" in path:
            continue
        bad.append((event, path))
    return bad
