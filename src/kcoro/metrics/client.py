"""Attach to a process that serves kcoro metrics (``kcoro.metrics.serve()`` or
``KCORO_METRICS=1``): resolve a PID or socket path, read the ``hello`` and the snapshots.

Every failure a user can cause — no such process, a process that does not serve metrics, a stale
socket left by a dead process, a socket that speaks something else, a target that exits while
attached — raises :class:`MonitorError` (or its subclass :class:`TargetGone`) with a message
meant to be printed as is.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import time
from typing import Any

from ._paths import UnsafeDirectory, pid_alive, socket_path_for
from .ndjson import SCHEMA_VERSION, SchemaError, dumps, validate

__all__ = ["AsyncConnection", "Connection", "MonitorError", "TargetGone", "connect",
           "connect_async", "resolve"]

MAX_LINE = 64 << 20  # a snapshot line longer than this is not ours
HELLO_TIMEOUT = 5.0


class MonitorError(Exception):
    """Attaching or reading failed; ``str(exc)`` is a complete message for the user."""


class TargetGone(MonitorError):
    """The target closed the connection (it exited, or stopped serving)."""


_HOW = "start it with KCORO_METRICS=1 in its environment, or call kcoro.metrics.serve()"


def resolve(target: str | int) -> str:
    """The socket path for a PID (``1234``) or a path; :class:`MonitorError` if there is
    nothing to attach to."""
    text = str(target)
    if text.isdigit():
        pid = int(text)
        try:
            path = socket_path_for(pid)
        except UnsafeDirectory as exc:
            raise MonitorError(f"refusing the metrics directory: {exc}") from None
        if os.path.exists(path):
            return path
        if pid_alive(pid):
            raise MonitorError(f"process {pid} is not serving kcoro metrics (no {path}); "
                               f"{_HOW}")
        raise MonitorError(f"no process {pid} (and no metrics socket for it in "
                           f"{os.path.dirname(path)})")
    path = text
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MonitorError(f"no such socket: {path}") from None
    except OSError as exc:
        raise MonitorError(f"cannot use {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise MonitorError(f"{path} is not a Unix socket")
    return path


def _subscribe_line(interval_s: float) -> bytes:
    return (dumps({"type": "subscribe", "schema": SCHEMA_VERSION,
                   "interval_s": float(interval_s)}) + "\n").encode()


def _pid_of(path: str) -> int | None:
    stem = os.path.basename(path).partition(".")[0]
    return int(stem) if stem.isdigit() else None


def _connect_error(path: str, exc: OSError) -> MonitorError:
    if isinstance(exc, ConnectionRefusedError):
        pid = _pid_of(path)
        who = f"process {pid} is gone" if pid is not None and not pid_alive(pid) else \
            "nothing is listening on it"
        return MonitorError(f"stale metrics socket {path}: {who}; remove the file")
    if isinstance(exc, FileNotFoundError):
        return TargetGone(f"{path} disappeared: the process stopped serving or exited")
    if isinstance(exc, PermissionError):
        return MonitorError(f"permission denied connecting to {path}")
    return MonitorError(f"cannot connect to {path}: {exc.strerror or exc}")


def parse_line(line: bytes, path: str, *, first: bool = False) -> dict[str, Any]:
    """Decode one protocol line; garbage raises :class:`MonitorError`."""
    try:
        rec = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        what = "its first line" if first else "a line"
        raise MonitorError(f"{path} does not speak the kcoro metrics protocol "
                           f"({what} is not JSON: {line[:60]!r})") from None
    if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
        raise MonitorError(f"{path} does not speak the kcoro metrics protocol "
                           f"(unexpected line {line[:60]!r})")
    if rec.get("schema") != SCHEMA_VERSION:
        raise MonitorError(f"{path} speaks metrics schema {rec.get('schema')!r}; this monitor "
                           f"understands schema {SCHEMA_VERSION}")
    if first:
        if rec["type"] != "hello":
            raise MonitorError(f"{path} does not speak the kcoro metrics protocol "
                               f"(no hello: {line[:60]!r})")
        try:
            validate(rec)
        except SchemaError as exc:
            raise MonitorError(f"{path}: malformed hello ({exc})") from None
    return rec


class Connection:
    """A blocking connection: ``hello`` on connect, then :meth:`read` per record."""

    def __init__(self, path: str, timeout: float = HELLO_TIMEOUT) -> None:
        self.path = path
        self._buf = b""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(path)
        except OSError as exc:
            s.close()
            raise _connect_error(path, exc) from None
        self.sock = s
        try:
            self.hello = parse_line(self._readline(timeout, first=True), path, first=True)
        except BaseException:
            s.close()
            raise
        self.pid = int(self.hello["pid"])

    def _readline(self, timeout: float | None, first: bool = False) -> bytes:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line, self._buf = self._buf[:i], self._buf[i + 1:]
                return line
            if len(self._buf) > (4096 if first else MAX_LINE):
                raise MonitorError(f"{self.path} does not speak the kcoro metrics protocol "
                                   f"(no line end after {len(self._buf)} bytes: "
                                   f"{self._buf[:60]!r})")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise MonitorError(f"{self.path}: no data within {timeout:g}s"
                                   + (" (not a kcoro metrics socket?)" if first else ""))
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError as exc:
                raise TargetGone(f"connection to {self.path} lost: {exc.strerror or exc}"
                                 ) from None
            if not data:
                if first:
                    raise MonitorError(f"{self.path} closed the connection without a hello "
                                       f"(not a kcoro metrics socket?)")
                raise TargetGone(f"process {self.hello.get('pid', '?')} closed the metrics "
                                 f"connection (it exited or stopped serving)")
            self._buf += data

    def read(self, timeout: float | None = None) -> dict[str, Any]:
        """The next record (a ``snapshot``); :class:`TargetGone` at the end."""
        return parse_line(self._readline(timeout), self.path)

    def subscribe(self, interval_s: float) -> None:
        """Ask for at most one snapshot per ``interval_s`` (less work for both sides)."""
        try:
            self.sock.sendall(_subscribe_line(interval_s))
        except OSError as exc:
            raise TargetGone(f"connection to {self.path} lost: {exc.strerror or exc}") from None

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(target: str | int, timeout: float = HELLO_TIMEOUT) -> Connection:
    """Resolve ``target`` (PID or socket path) and attach; raises :class:`MonitorError`."""
    return Connection(resolve(target), timeout)


class AsyncConnection:
    """The same over asyncio streams (what the Textual UI uses)."""

    def __init__(self, path: str, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, hello: dict[str, Any]) -> None:
        self.path = path
        self.reader = reader
        self.writer = writer
        self.hello = hello
        self.pid = int(hello.get("pid", 0))

    async def _readline(self, first: bool = False) -> bytes:
        try:
            line = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if first:
                raise MonitorError(f"{self.path} closed the connection without a hello "
                                   f"(not a kcoro metrics socket?)") from None
            if exc.partial:
                raise MonitorError(f"{self.path}: connection ended mid-record") from None
            raise TargetGone(f"process {self.pid} closed the metrics connection (it exited "
                             f"or stopped serving)") from None
        except asyncio.LimitOverrunError:
            raise MonitorError(f"{self.path} does not speak the kcoro metrics protocol "
                               f"(a line longer than {MAX_LINE} bytes)") from None
        except OSError as exc:
            raise TargetGone(f"connection to {self.path} lost: {exc.strerror or exc}"
                             ) from None
        return line[:-1]

    async def read(self) -> dict[str, Any]:
        return parse_line(await self._readline(), self.path)

    def subscribe(self, interval_s: float) -> None:
        self.writer.write(_subscribe_line(interval_s))

    def close(self) -> None:
        self.writer.close()


async def connect_async(target: str | int, timeout: float = HELLO_TIMEOUT) -> AsyncConnection:
    path = resolve(target)
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path, limit=MAX_LINE), timeout)
    except TimeoutError:
        raise MonitorError(f"timed out connecting to {path}") from None
    except OSError as exc:
        raise _connect_error(path, exc) from None
    conn = AsyncConnection(path, reader, writer, {})
    try:
        first = await asyncio.wait_for(conn._readline(first=True), timeout)
    except TimeoutError:
        writer.close()
        raise MonitorError(f"{path}: no hello within {timeout:g}s (not a kcoro metrics "
                           f"socket?)") from None
    except BaseException:
        writer.close()
        raise
    conn.hello = parse_line(first, path, first=True)
    conn.pid = int(conn.hello["pid"])
    return conn
