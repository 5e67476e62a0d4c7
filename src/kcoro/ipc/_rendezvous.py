"""Connecting unrelated processes by path: a Unix stream socket that hands out the memfd.

Security: the socket is created 0600 inside a directory that must be owned by this user and not
writable by anyone else (``default_dir()`` makes ``$XDG_RUNTIME_DIR/kcoro`` or
``/tmp/kcoro-<uid>`` with mode 0700); every accepted connection's peer credentials
(``SO_PEERCRED``) must carry our uid, else it is refused.  ``"@name"`` uses the Linux abstract
namespace instead (no file at all; the uid check still applies).

Wire format (little-endian): ``magic "KCRV" | u16 version | u16 type | u32 body length`` then the
body (JSON, at most 4 KiB).  HELLO (client) → WELCOME (server, with the memfd as SCM_RIGHTS) or
ERROR (with a message).  A malformed, oversized or truncated frame drops that connection with a
recorded error (``Listener.errors``); the listener and every other peer carry on.

Files left behind: the socket file is unlinked when the listener closes (``detach()``, exit).  If
the listening process is SIGKILLed the file stays until the next ``listen()`` on that path, which
detects that nobody answers and replaces it; use ``"@name"`` when even that is unacceptable.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import threading
from typing import TYPE_CHECKING, Any

from ._codec import ProtocolError

if TYPE_CHECKING:
    from ._chan import Channel

log = logging.getLogger("kcoro.ipc")

__all__ = ["Listener", "connect", "default_dir"]

MAGIC = b"KCRV"
VERSION = 1
T_HELLO, T_WELCOME, T_ERROR = 1, 2, 3
MAX_BODY = 4096
_F = struct.Struct("<4sHHI")
_CRED = struct.Struct("3i")


def default_dir() -> str:
    """An owner-only (0700) directory for rendezvous sockets."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    d = os.path.join(base, "kcoro") if base and os.path.isdir(base) else \
        f"/tmp/kcoro-{os.getuid()}"
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    _check_dir(d)
    return d


def _check_dir(d: str) -> None:
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{d!r} must be a directory owned by uid {os.getuid()} and not "
                              f"writable by group or others (use kcoro.ipc.default_dir())")


def _addr(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0kcoro-rv/" + path[1:].encode()
    return os.path.abspath(path)


def _frame(kind: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    return _F.pack(MAGIC, VERSION, kind, len(data)) + data


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise ProtocolError(f"truncated frame ({len(out)} of {n} bytes)")
        out += chunk
    return out


def _parse(head: bytes, conn: socket.socket, want: int) -> dict[str, Any]:
    magic, ver, kind, n = _F.unpack(head)
    if magic != MAGIC or ver != VERSION:
        raise ProtocolError(f"bad frame header {head!r}")
    if n > MAX_BODY:
        raise ProtocolError(f"frame body of {n} bytes exceeds {MAX_BODY}")
    body = _recv_exact(conn, n)
    try:
        obj = json.loads(body) if body else {}
    except ValueError as exc:
        raise ProtocolError(f"malformed frame body: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("frame body is not an object")
    if kind == T_ERROR:
        raise ConnectionRefusedError(str(obj.get("error", "refused by the listener")))
    if kind != want:
        raise ProtocolError(f"unexpected frame type {kind}")
    return obj


class Listener:
    def __init__(self, ch: Channel[Any], path: str) -> None:
        self.ch = ch
        self.path = path
        self.addr = _addr(path)
        self.errors: list[str] = []
        self.refused = 0
        self.accepted = 0
        self._ino = 0
        self._closed = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if isinstance(self.addr, str):
            _check_dir(os.path.dirname(self.addr))
            self._remove_stale(self.addr)
            old = os.umask(0o177)
            try:
                sock.bind(self.addr)
            finally:
                os.umask(old)
            os.chmod(self.addr, 0o600)
            self._ino = os.stat(self.addr).st_ino
        else:
            sock.bind(self.addr)
        sock.listen(16)
        self.sock = sock
        self._thread = threading.Thread(target=self._serve, daemon=True,
                                        name=f"kcoro-ipc-listen:{path}")
        self._thread.start()

    @staticmethod
    def _remove_stale(path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path!r} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(path)  # its listener died (kill -9): replace it
            return
        finally:
            probe.close()
        raise FileExistsError(f"{path!r} is served by a live listener")

    def _serve(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                self._handle(conn)
            except Exception as exc:
                self.errors.append(str(exc))
                if isinstance(exc, ProtocolError):
                    try:  # tell the peer why it is dropped
                        conn.sendall(_frame(T_ERROR, {"error": str(exc)}))
                    except OSError:
                        pass
                log.warning("kcoro.ipc listener %s: dropped a peer: %s", self.path, exc)
            finally:
                conn.close()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        pid, uid, _ = _CRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   _CRED.size))
        if uid != os.getuid():
            self.refused += 1
            conn.sendall(_frame(T_ERROR, {"error": "connection from another user refused"}))
            raise PermissionError(f"refused pid {pid} of uid {uid}")
        _parse(_recv_exact(conn, _F.size), conn, T_HELLO)
        r = self.ch._r
        body = _frame(T_WELCOME, {"name": r.name, "kind": r.kind})
        socket.send_fds(conn, [body], [r.fd])
        self.accepted += 1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if isinstance(self.addr, str):
            try:
                if os.stat(self.addr).st_ino == self._ino:
                    os.unlink(self.addr)
            except FileNotFoundError:
                pass


def connect(path: str, timeout: float = 5.0) -> Channel[Any]:
    """Attach to the IPC channel served at ``path`` by ``Channel.listen(path)``."""
    from ._chan import Channel
    from ._region import Region

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(_addr(path))
        try:
            sock.sendall(_frame(T_HELLO, {"pid": os.getpid()}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the listener refused us before reading: its ERROR frame says why
        try:
            data, fds, _, _ = socket.recv_fds(sock, _F.size + MAX_BODY, 4)
        except ConnectionResetError:
            raise ConnectionRefusedError(f"the listener at {path!r} dropped the connection") \
                from None
        if not data:
            raise ConnectionRefusedError(f"the listener at {path!r} closed the connection")
        try:
            if len(data) < _F.size:
                data += _recv_exact(sock, _F.size - len(data))
            head, rest = data[:_F.size], data[_F.size:]

            class _Buf:
                def __init__(self, b: bytes) -> None:
                    self.b = b

                def recv(self, n: int) -> bytes:
                    if self.b:
                        out, self.b = self.b[:n], self.b[n:]
                        return out
                    return sock.recv(n)

            _parse(head, _Buf(rest), T_WELCOME)  # type: ignore[arg-type]
            if len(fds) != 1:
                raise ProtocolError(f"expected one memfd, got {len(fds)} fds")
            fd = fds.pop()
        finally:
            for f in fds:
                os.close(f)
    finally:
        sock.close()
    return Channel(_region=Region(fd))
