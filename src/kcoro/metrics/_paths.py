"""Where metrics sockets live, and how a target (PID or path) is resolved to one.

Sockets live in one owner-only directory per user:

* ``$KCORO_METRICS_DIR`` if set (tests and unusual setups);
* else ``$XDG_RUNTIME_DIR/kcoro/metrics`` when the runtime directory exists (it is per-user);
* else ``/tmp/kcoro-<uid>/metrics``.

(``kcoro.ipc`` keeps its rendezvous sockets in the parent ``kcoro`` directory; the ``metrics``
subdirectory keeps the two apart.)

Each serving process binds ``<dir>/<pid>.sock`` (mode 0600).  The directory is created with mode
0700 and refused if another user owns it or others can write to it: a monitor must not connect to a
socket planted by someone else, and a program must not publish its internals to other users.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass

__all__ = ["Endpoint", "UnsafeDirectory", "list_endpoints", "runtime_dir", "socket_path_for"]


class UnsafeDirectory(OSError):
    """The metrics directory is not owned by this user or is open to others."""


def runtime_dir(create: bool = False) -> str:
    """The per-user directory holding metrics sockets (created 0700 when ``create``)."""
    d = os.environ.get("KCORO_METRICS_DIR")
    chain = [d] if d else []
    if not d:
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        if xdg and os.path.isdir(xdg):
            base = os.path.join(xdg, "kcoro")
        else:
            base = os.path.join(tempfile.gettempdir(), f"kcoro-{os.getuid()}")
        d = os.path.join(base, "metrics")
        chain = [base, d]
    for part in chain:
        if create:
            try:
                os.mkdir(part, 0o700)
            except FileExistsError:
                pass
        check_dir(part)
    return d


def check_dir(d: str) -> None:
    """Raise :class:`UnsafeDirectory` unless ``d`` is a directory of ours closed to others."""
    try:
        st = os.lstat(d)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeDirectory(f"{d} is not a directory")
    if st.st_uid != os.getuid():
        raise UnsafeDirectory(f"{d} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        raise UnsafeDirectory(f"{d} is accessible to other users (mode {st.st_mode & 0o777:o}); "
                              f"expected 0700")


def socket_path_for(pid: int, directory: str | None = None) -> str:
    return os.path.join(directory if directory is not None else runtime_dir(), f"{pid}.sock")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> str:
    """The command line of ``pid`` (from /proc), or '' if unknown."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return " ".join(p.decode(errors="replace") for p in raw.split(b"\0") if p)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A metrics socket found in the runtime directory."""

    pid: int
    path: str
    alive: bool  # the process with that pid exists (else the socket is stale)
    command: str


def list_endpoints(directory: str | None = None) -> list[Endpoint]:
    """Every ``<pid>.sock`` in the runtime directory, sorted by pid (stale ones included)."""
    d = directory if directory is not None else runtime_dir()
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for n in names:
        stem, dot, ext = n.partition(".")
        if ext != "sock" or not dot or not stem.isdigit():
            continue
        pid = int(stem)
        path = os.path.join(d, n)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        alive = pid_alive(pid)
        out.append(Endpoint(pid, path, alive, cmdline(pid) if alive else ""))
    return sorted(out, key=lambda e: e.pid)
