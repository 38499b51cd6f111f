"""Live progress of a ComfyUI prompt from the server's websocket (``/ws?clientId=...``), with the standard library only.

ComfyUI sends each client JSON text messages about the prompts it queued: ``execution_start``,
``execution_cached`` (nodes reused from an earlier run), ``executing`` (the node now running; ``node`` null when the
prompt is done), ``progress`` (``value``/``max`` steps of the running node), ``execution_error``. Binary messages
(previews) are skipped. The reader is a minimal RFC 6455 client: it answers pings, joins fragmented messages and
stops at a close frame or when the socket closes. If the websocket cannot be opened the run still completes (the
runner polls /history); only the live lines are missing.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
import struct
import threading
import time

log = logging.getLogger("comfy_progress")
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 1, 2, 0, 8, 9, 10


class WebSocketError(OSError):
    """The server did not accept the websocket handshake, or sent a malformed frame."""


class WebSocket:
    """A blocking client connection; ``messages()`` yields (opcode, payload) of whole messages."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise WebSocketError("the server closed the connection during the websocket handshake")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode(errors="replace")
        if " 101 " not in f"{status} ":
            raise WebSocketError(f"websocket handshake refused: {status}")
        self.sock.settimeout(None)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        length = len(payload)
        header = bytes([0x80 | opcode])
        if length < 126:
            header += bytes([0x80 | length])
        elif length < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack("!H", length)
        else:
            header += bytes([0x80 | 127]) + struct.pack("!Q", length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def messages(self):
        """Yield (opcode, payload) per whole text or binary message until the server closes."""
        parts, first_opcode = [], None
        while True:
            b0, b1 = self._read(2)
            fin, opcode, length = b0 & 0x80, b0 & 0x0F, b1 & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read(8))[0]
            mask = self._read(4) if b1 & 0x80 else b""
            payload = self._read(length)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == CLOSE:
                return
            if opcode == PING:
                self._send(PONG, payload)
                continue
            if opcode == PONG:
                continue
            if opcode not in (TEXT, BINARY, CONTINUATION):
                raise WebSocketError(f"unexpected websocket opcode {opcode}")
            first_opcode = opcode if opcode != CONTINUATION else first_opcode
            parts.append(payload)
            if fin:
                yield first_opcode, b"".join(parts)
                parts = []

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the server
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Progress:
    """Logs a prompt's progress: each node as it starts, its steps (at most one line a second), then quiet-time
    reminders every ``idle_s`` seconds. Feed it ``handle(message)``; call ``tick()`` while waiting."""

    def __init__(self, prompt: dict, idle_s: float = 30):
        self.prompt, self.idle_s = prompt, idle_s
        self.start = time.monotonic()
        self.last_line = self.last_step = self.start
        self.node: str | None = None
        self.lock = threading.Lock()

    def name(self, node_id) -> str:
        kind = self.prompt.get(str(node_id), {}).get("class_type", "?")
        return f"node {node_id} {kind}"

    def say(self, text: str) -> None:
        now = time.monotonic()
        self.last_line = now
        log.info("[%6.1f s] %s", now - self.start, text)

    def handle(self, message: dict) -> None:
        kind, data = message.get("type"), message.get("data") or {}
        with self.lock:
            if kind == "execution_start":
                self.say("running")
            elif kind == "execution_cached" and data.get("nodes"):
                self.say(f"{len(data['nodes'])} node(s) cached from an earlier run")
            elif kind == "executing" and data.get("node") is not None:
                self.node = str(data["node"])
                self.say(self.name(self.node))
            elif kind == "progress":
                value, total, now = data.get("value", 0), data.get("max", 0), time.monotonic()
                if value in (1, total) or now - self.last_step >= 1:
                    self.last_step = now
                    self.say(f"{self.name(data.get('node', self.node))}: step {value}/{total}")
            elif kind == "execution_error":
                self.say(f"error in {self.name(data.get('node_id'))}: {data.get('exception_message', '').strip()}")

    def tick(self) -> None:
        with self.lock:
            if time.monotonic() - self.last_line >= self.idle_s:
                self.say(f"still running {self.name(self.node) if self.node else 'the prompt'}")


def follow(host: str, port: int, client_id: str, progress: Progress) -> WebSocket | None:
    """Open the websocket for ``client_id`` and feed its messages to ``progress`` from a daemon thread. Returns the
    socket (close it to stop) or None when it cannot be opened (logged once)."""
    try:
        ws = WebSocket(host, port, f"/ws?clientId={client_id}")
    except OSError as e:
        log.info("no live progress (%s); waiting for the result", e)
        return None

    def read() -> None:
        try:
            for opcode, payload in ws.messages():
                if opcode == TEXT:
                    progress.handle(json.loads(payload))
        except (OSError, ValueError) as e:  # closed by stop(), or a malformed frame: the run goes on without lines
            log.debug("progress stream ended: %s", e)

    threading.Thread(target=read, name="comfy-progress", daemon=True).start()
    return ws
