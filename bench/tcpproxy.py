"""A small TCP proxy on 127.0.0.1 that can cut or stall the service behind it (the database, usually).

    proxy = TcpProxy(("127.0.0.1", 5432)); proxy.start()    # listens on proxy.port
    proxy.cut()        # unreachable: the listener closes and every connection is reset
    proxy.blackhole()  # stalled: connections are accepted and held, nothing is forwarded either way
    proxy.heal()       # back to forwarding (new connections; held ones resume)

Used by ``bench.faults`` and ``tests/faults``: the processes under test are pointed at the proxy's port,
so a fault is injected without touching the real server (which other processes may share).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.port = port
        self.mode = "forward"  # forward | cut | blackhole
        self._listener: socket.socket | None = None
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._closed = False

    # -- control ------------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        self._listen()
        return self

    def cut(self) -> None:
        """Unreachable: new connections are refused, established ones reset."""
        self.mode = "cut"
        self._close_listener()
        self._drop_all()

    def blackhole(self) -> None:
        """Stalled: every byte is held (as if packets were dropped); new connections hang."""
        self.mode = "blackhole"

    def heal(self) -> None:
        was = self.mode
        self.mode = "forward"
        if was == "cut":
            self._listen()

    def close(self) -> None:
        self._closed = True
        self._close_listener()
        self._drop_all()

    # -- internals ----------------------------------------------------------------------------------
    def _listen(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="tcpproxy-accept").start()

    def _close_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()

    def _drop_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            for sock in (client, upstream):
                if sock is None:
                    continue
                with contextlib.suppress(OSError):
                    # RST rather than FIN: what a client sees when a server vanishes.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed and self._listener is listener:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="tcpproxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        while self.mode == "blackhole" and not self._closed:
            time.sleep(0.05)  # a connection made while stalled waits, like a SYN to a dead route
        if self.mode != "forward":
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs.append((client, upstream))
        self._pump(client, upstream)

    def _pump(self, client: socket.socket, upstream: socket.socket) -> None:
        socks = [client, upstream]
        try:
            while not self._closed:
                if self.mode == "blackhole":
                    time.sleep(0.05)
                    continue
                if self.mode == "cut":
                    return
                readable, _, _ = select.select(socks, [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (upstream if sock is client else client).sendall(data)
        except OSError:
            return
        finally:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._pairs = [p for p in self._pairs if p[0] is not client]
