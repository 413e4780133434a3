"""The line from the training worker to the referee: JSON messages over an authenticated local socket.

    channel = Channel()                                    # referee: listen on 127.0.0.1, a fresh key per process
    subprocess.Popen(cmd, env={**os.environ, **channel.env})
    received = channel.next(timeout=1.0)                   # (referee's monotonic time, message) or None

    link = Link.from_env()                                 # worker (rank 0): connect with the key from the env
    link.send("step_stop", step=3, seconds=0.81, loss=7.2)

Messages are JSON objects with a "kind", sent as length-prefixed frames (``multiprocessing.connection``'s
``send_bytes``; never pickle, so a hostile worker cannot run code in the referee). The referee stamps each
message with its own clock as it arrives: that is what it checks the worker's timings against. The channel is
a socket rather than a file so that nothing the worker writes later can rewrite what the referee already read.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener

ADDRESS_ENV, KEY_ENV = "SPEEDRUN_REFEREE", "SPEEDRUN_REFEREE_KEY"
MAX_MESSAGE_BYTES = 64 << 20
CLOSED = "closed"  # the kind the referee sees when the worker's end goes away


class Channel:
    """The referee's end: accepts one worker connection and queues its messages with their arrival times."""

    def __init__(self):
        self.key = secrets.token_bytes(32)
        self.listener = Listener(("127.0.0.1", 0), authkey=self.key)
        self.messages: queue.Queue[tuple[float, dict]] = queue.Queue()
        self.closed = False
        threading.Thread(target=self._serve, name="speedrun-channel", daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        host, port = self.listener.address
        return {ADDRESS_ENV: f"{host}:{port}", KEY_ENV: self.key.hex()}

    def _serve(self) -> None:
        while True:
            try:
                conn = self.listener.accept()
                break
            except (OSError, EOFError, AuthenticationError):  # closed, or a client that failed the challenge
                if self.closed:
                    return
        self._read(conn)

    def _read(self, conn: Connection) -> None:
        while True:
            try:
                data = conn.recv_bytes(MAX_MESSAGE_BYTES)
            except (EOFError, OSError):
                self.messages.put((time.monotonic(), {"kind": CLOSED}))
                return
            arrived = time.monotonic()
            try:
                message = json.loads(data)
            except (UnicodeDecodeError, ValueError, RecursionError):
                message = None
            if not isinstance(message, dict) or not isinstance(message.get("kind"), str):
                message = {"kind": "garbled", "bytes": len(data)}
            self.messages.put((arrived, message))

    def next(self, timeout: float) -> tuple[float, dict] | None:
        """The next message with the referee's monotonic arrival time, or None after ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True
        self.listener.close()


class Link:
    """The worker's end (rank 0 only): one connection to the referee."""

    def __init__(self, conn: Connection | None):
        self.conn = conn

    @classmethod
    def from_env(cls) -> Link:
        """Connect to the referee named in the environment; a worker started by hand gets a silent link."""
        address = os.environ.get(ADDRESS_ENV)
        if not address:
            return cls(None)
        host, port = address.rsplit(":", 1)
        return cls(Client((host, int(port)), authkey=bytes.fromhex(os.environ[KEY_ENV])))

    def send(self, kind: str, **fields) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send_bytes(json.dumps({"kind": kind, **fields}).encode())
        except OSError:  # the referee is gone (killed): nobody is left to report to
            self.conn = None

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
