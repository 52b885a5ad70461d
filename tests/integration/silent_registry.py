"""A "registry" that accepts TCP connections on 127.0.0.1 and never answers (not a test module).

It reads and discards what a client sends and writes nothing, so a client without a deadline waits forever. It
counts the connections it accepted and those still open (not closed by the client): a pull stopped by its
deadline must leave none open, or the engine would still be waiting on it. close() ends the thread and closes
every socket it holds.
"""

from __future__ import annotations

import socket
import threading
import time


class SilentRegistry(object):

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.address = '127.0.0.1:%d' % self.port
        self.accepted = 0
        self._open = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = []
        self._thread = threading.Thread(target=self._serve, name='silent-registry', daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stopping.is_set():
            try:
                conn, _peer = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(0.2)
            with self._lock:
                self.accepted += 1
                self._open.add(conn)
            reader = threading.Thread(target=self._hold, args=(conn,), daemon=True)
            self._threads.append(reader)
            reader.start()

    def _hold(self, conn):
        """Swallow whatever the client sends, answer nothing, until it hangs up or the server stops."""
        try:
            while not self._stopping.is_set():
                try:
                    if not conn.recv(65536):
                        break  # the client closed the connection
                except socket.timeout:
                    continue
                except OSError:
                    break
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def open_connections(self):
        with self._lock:
            return len(self._open)

    def wait_all_closed(self, timeout):
        """True once every accepted connection was closed by its client (within timeout seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.open_connections():
                return True
            time.sleep(0.2)
        return not self.open_connections()

    def close(self):
        self._stopping.set()
        self._thread.join(5)
        self.sock.close()
        for reader in self._threads:
            reader.join(5)
