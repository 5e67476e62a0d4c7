"""Push metrics to monitors in other processes over a Unix socket.

Protocol (NDJSON; docs/MONITOR.md): on connect the server sends a ``hello`` record, then a
``snapshot`` at once, then a ``snapshot`` whenever the emit rules say so.  A client may send a
``subscribe`` record (``{"type":"subscribe","schema":1,"interval_s":0.5}``) to get at most one
snapshot per ``interval_s``; anything else it sends is ignored.  Closing the socket detaches.

Emit rules (the C metrics pipe's ``emit_min_ops`` / ``emit_min_ms``, checked every ``tick_ms``
while at least one monitor is attached):

* at least one channel operation since the last emit, and ``emit_min_ms`` elapsed; or
* ``emit_min_ops`` items moved (received, or reported undelivered) since the last emit (checked
  at the next tick, so at most one snapshot per tick); or
* ``heartbeat_s`` elapsed (idle programs still show their tasks and stay visibly alive).

Never blocks the program: everything runs in one daemon thread that sleeps in ``select`` and
does nothing at all while no monitor is attached.  Snapshots use the public ``stats()`` calls
(each takes the kernel lock for a few dozen bytecodes).  The trigger check reads the channels'
``sends``/``recvs`` counters without the lock: a racy read can only move an emit by one tick.
Each client gets at most one snapshot in flight: if the previous one is not fully written (a
slow or stuck monitor), the new one is dropped for that client and counted; the next snapshot it
does get carries its ``dropped`` total.  Sockets are non-blocking, so a monitor that stops
reading costs one pending buffer, never backpressure.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import platform
import selectors
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from .. import _registry
from ._paths import runtime_dir, socket_path_for
from ._snapshot import snapshot
from .ndjson import SCHEMA_VERSION, dumps

__all__ = ["MetricsServer", "current_server", "serve", "stop"]

MAX_SOCKET_PATH = 107  # sizeof(sun_path) - 1 on Linux


@dataclass
class _Client:
    sock: socket.socket
    pending: bytes = b""
    seq: int = 0
    dropped: int = 0
    last_sent: float = 0.0  # monotonic time of the last snapshot queued for it
    interval: float = 0.0  # the monitor asked for at most one snapshot per this many seconds
    inbuf: bytes = b""


class MetricsServer:
    """A background thread serving snapshots on a Unix socket (see the module docstring)."""

    def __init__(self, path: str | None = None, *, emit_min_ops: int = 1024,
                 emit_min_ms: float = 250.0, tick_ms: float = 50.0,
                 heartbeat_s: float = 1.0) -> None:
        if emit_min_ops < 1 or emit_min_ms <= 0 or tick_ms <= 0 or heartbeat_s <= 0:
            raise ValueError("emit_min_ops, emit_min_ms, tick_ms and heartbeat_s must be > 0")
        self.pid = os.getpid()
        self._default_path = path is None
        self.path = path if path is not None else socket_path_for(self.pid, runtime_dir(True))
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise ValueError(f"metrics socket path too long for a Unix socket "
                             f"({len(self.path)} > {MAX_SOCKET_PATH}): {self.path}; set "
                             f"KCORO_METRICS_DIR to a shorter directory")
        self.emit_min_ops = int(emit_min_ops)
        self.emit_min_ms = float(emit_min_ms)
        self.tick_ms = float(tick_ms)
        self.heartbeat_s = float(heartbeat_s)
        self._clients: dict[int, _Client] = {}
        self._lock = threading.Lock()  # guards the counters read by stats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r, self._wake_w = -1, -1
        self._last_emit = 0.0
        self._last_ops = (0, 0)
        self._counters = {"samples": 0, "dropped": 0, "connections": 0, "bytes": 0,
                          "errors": 0, "ticks": 0}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> MetricsServer:
        if self._thread is not None:
            return self
        self._listener = self._bind()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="kcoro-metrics", daemon=True)
        self._thread.start()
        return self

    def _bind(self) -> socket.socket:
        path = self.path
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(errno.EEXIST, "not a socket, refusing to replace", path)
            if self._default_path or not _listening(path):
                os.unlink(path)  # ours by pid (left by an earlier process), or stale
            else:
                raise FileExistsError(errno.EADDRINUSE, "another process serves here", path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o177)
            try:
                s.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
            s.listen(8)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        return s

    def stop(self, timeout: float = 2.0) -> None:
        """Stop serving: close every connection and remove the socket file."""
        th = self._thread
        if th is None:
            return
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if th is not threading.current_thread():
            th.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stats(self) -> dict[str, int]:
        """``samples`` emitted, snapshots ``dropped`` for slow monitors, ``connections`` so far,
        ``clients`` attached now, ``bytes`` written, ``errors`` (snapshots that failed),
        ``ticks`` (emit-rule checks so far)."""
        with self._lock:
            return {**self._counters, "clients": len(self._clients)}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    # -- the thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        lst = self._listener
        assert lst is not None
        sel.register(lst, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                timeout = None
                if self._clients:
                    timeout = max(0.0, next_tick - time.monotonic())
                for key, ev in sel.select(timeout):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        try:
                            os.read(self._wake_r, 64)
                        except OSError:
                            pass
                    else:
                        c = self._clients.get(key.fd)
                        if c is not None:
                            self._service(sel, c, ev)
                now = time.monotonic()
                if self._clients and now >= next_tick:
                    next_tick = now + self.tick_ms / 1000
                    self._count("ticks")
                    try:
                        if self._due(now):
                            self._emit(sel, now)
                    except Exception:  # never let a bug in here stop serving
                        self._count("errors")
        finally:
            for c in list(self._clients.values()):
                self._drop_client(sel, c)
            sel.close()
            lst.close()
            try:
                if os.path.exists(self.path) and stat.S_ISSOCK(os.lstat(self.path).st_mode):
                    os.unlink(self.path)
            except OSError:
                pass
            os.close(self._wake_r)
            os.close(self._wake_w)

    def _ops(self) -> tuple[int, int]:
        """(items received or undelivered, latest operation time) over every channel.

        Unlocked reads of counters the channels keep anyway (see the module docstring); an
        item counts once, when it is received or reported undelivered, and any operation at
        all moves ``last_op_ns``."""
        n = last = 0
        for ch in _registry.channels.items():
            n += getattr(ch, "recvs", 0) + getattr(ch, "undelivered", 0)
            t = getattr(ch, "last_op_ns", 0)
            if t > last:
                last = t
        return n, last

    def _due(self, now: float) -> bool:
        elapsed = now - self._last_emit
        if elapsed >= self.heartbeat_s:
            return True
        ops, last = self._ops()
        d_ops = ops - self._last_ops[0]
        if d_ops <= 0 and last == self._last_ops[1]:
            return False  # nothing happened since the last emit
        return d_ops >= self.emit_min_ops or elapsed * 1000 >= self.emit_min_ms

    def _accept(self, sel: selectors.BaseSelector) -> None:
        assert self._listener is not None
        while True:
            try:
                conn, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._count("errors")
                return
            conn.setblocking(False)
            c = _Client(conn, last_sent=time.monotonic())
            if not self._clients:  # the schedule starts with the first monitor's snapshot
                self._last_emit = c.last_sent
                self._last_ops = self._ops()
            self._clients[conn.fileno()] = c
            sel.register(conn, selectors.EVENT_READ, "client")
            self._count("connections")
            hello = {
                "type": "hello", "schema": SCHEMA_VERSION, "pid": self.pid,
                "argv": [str(a) for a in sys.argv], "python": platform.python_version(),
                "kcoro": _version(),
                "emit": {"min_ops": self.emit_min_ops, "min_ms": self.emit_min_ms,
                         "tick_ms": self.tick_ms, "heartbeat_s": self.heartbeat_s},
            }
            body = self._snapshot_body()
            line = dumps(hello) + "\n"
            if body is not None:
                c.seq += 1
                line += _snapshot_line(body, c)
            self._write(sel, c, line.encode())

    def _snapshot_body(self) -> str | None:
        try:
            return json.dumps(snapshot().to_dict(), separators=(",", ":"), allow_nan=False)
        except Exception:  # a snapshot must never take the program down
            self._count("errors")
            return None

    def _emit(self, sel: selectors.BaseSelector, now: float) -> None:
        tick = self.tick_ms / 1000
        # A monitor gets at most one snapshot per tick (it may have had its on-connect one just
        # now) and none sooner than the interval it subscribed to (half a tick of slack, since
        # emits happen on ticks).
        due = [c for c in self._clients.values()
               if now - c.last_sent >= max(tick, c.interval - tick / 2)]
        if not due:
            return  # nobody wants one yet: do not even take it
        self._last_emit = now
        self._last_ops = self._ops()
        body = self._snapshot_body()
        if body is None:
            return
        self._count("samples")
        for c in due:
            if c.pending:
                c.dropped += 1
                self._count("dropped")
                continue
            c.seq += 1
            c.last_sent = now
            self._write(sel, c, _snapshot_line(body, c).encode())

    def _write(self, sel: selectors.BaseSelector, c: _Client, data: bytes) -> None:
        data = c.pending + data if c.pending else data
        try:
            n = c.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._drop_client(sel, c)
            return
        self._count("bytes", n)
        c.pending = data[n:]
        sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.pending else 0),
                   "client")

    def _service(self, sel: selectors.BaseSelector, c: _Client, ev: int) -> None:
        if ev & selectors.EVENT_READ:
            try:
                data = c.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                data = b"?"
            except OSError:
                data = b""
            if not data:  # the monitor went away
                self._drop_client(sel, c)
                return
            self._requests(c, data)
        if ev & selectors.EVENT_WRITE and c.pending:
            self._write(sel, c, b"")

    def _requests(self, c: _Client, data: bytes) -> None:
        """Lines from a monitor: ``subscribe`` sets its interval; anything else is ignored."""
        buf = c.inbuf + data
        *lines, rest = buf.split(b"\n")
        c.inbuf = rest if len(rest) <= 4096 else b""  # no line end: not ours, forget it
        for line in lines:
            try:
                req = json.loads(line)
            except ValueError:
                continue
            if isinstance(req, dict) and req.get("type") == "subscribe":
                iv = req.get("interval_s")
                if isinstance(iv, (int, float)) and not isinstance(iv, bool) and iv >= 0:
                    c.interval = min(float(iv), 3600.0)

    def _drop_client(self, sel: selectors.BaseSelector, c: _Client) -> None:
        self._clients.pop(c.sock.fileno(), None)
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.close()


def _snapshot_line(body: str, c: _Client) -> str:
    # The shared body is encoded once per emit; seq and dropped are per client.
    return f'{{"seq":{c.seq},"dropped":{c.dropped},{body[1:]}\n'


def _listening(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _version() -> str:
    from .. import __version__

    return __version__


# -- the process-wide server ------------------------------------------------------------------
_server: MetricsServer | None = None
_server_lock = threading.Lock()
_auto = False


def serve(path: str | None = None, **options: Any) -> MetricsServer:
    """Serve this process's metrics on a Unix socket (default ``<runtime dir>/<pid>.sock``,
    owner-only) from a background thread, and return the server.  Idempotent: a second call
    returns the running server.  ``options``: ``emit_min_ops``, ``emit_min_ms``, ``tick_ms``,
    ``heartbeat_s``."""
    global _server
    with _server_lock:
        if _server is not None and _server.running:
            return _server
        srv = MetricsServer(path, **options).start()
        _server = srv
        return srv


def stop() -> None:
    """Stop the process-wide server (if any) and remove its socket."""
    global _server, _auto
    with _server_lock:
        srv, _server = _server, None
        _auto = False
    if srv is not None:
        srv.stop()


def current_server() -> MetricsServer | None:
    return _server


def autoserve() -> None:
    """``KCORO_METRICS=1``: serve with default options; errors go to stderr, never raise."""
    global _auto
    try:
        serve()
        _auto = True
    except Exception as exc:
        print(f"kcoro: KCORO_METRICS is set but metrics serving failed: {exc}", file=sys.stderr)


def _at_exit() -> None:
    srv = _server
    if srv is not None:
        srv.stop()


def _after_fork_in_child() -> None:
    # The child has no server thread; its copy of the listening socket must not linger, and the
    # parent's socket file is the parent's.  A child of an auto-served program serves itself.
    global _server
    srv, _server = _server, None
    if srv is not None:
        srv._thread = None
        for fd in (srv._wake_r, srv._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if srv._listener is not None:
            srv._listener.close()
        for c in srv._clients.values():
            c.sock.close()
    if _auto:
        autoserve()


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
