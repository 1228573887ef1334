#!/usr/bin/env python3
"""Ask a Kafka broker whether it is ready. Standard library only.

Opens a TCP connection and sends real Kafka requests:

1. ApiVersions v0 (every broker answers it): the response must carry
   error_code 0 and the broker's list of supported APIs.
2. Metadata, at the highest non-flexible version (v0..v8) the broker
   supports: the response must list at least one broker (with --node-id,
   that node). A broker answers this only once it has joined the KRaft
   quorum and caught up with the metadata log, so it is a better "ready"
   than an open port.

Retries until --timeout seconds have passed (default 90). With --pid, gives
up early if that process has exited (the broker died while starting).

Exit status: 0 ready, 1 not ready in time, 2 the watched process died.

    python3 deploy/kafka_ready.py --host 127.0.0.1 --port 19092 --timeout 90
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import sys
import time

API_METADATA = 3
API_VERSIONS = 18
ERR_UNSUPPORTED_VERSION = 35
CLIENT_ID = b"prm-kafka-ready"


class NotReady(Exception):
    pass


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise NotReady("truncated response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int16(self) -> int:
        return self.take(">h")

    def int32(self) -> int:
        return self.take(">i")

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        if len(raw) != length:
            raise NotReady("truncated string")
        self.pos += length
        return raw.decode("utf-8", "replace")


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise NotReady("connection closed by broker")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def call(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> Reader:
    """Send one request (header v1) and return a reader past the response header (v0)."""
    header = struct.pack(">hhih", api_key, version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", recv_exact(sock, 4))
    if size < 4 or size > 64 * 1024 * 1024:
        raise NotReady(f"implausible response size {size}")
    reader = Reader(recv_exact(sock, size))
    got = reader.int32()
    if got != correlation_id:
        raise NotReady(f"correlation id {got}, expected {correlation_id}")
    return reader


def api_versions(sock: socket.socket) -> dict[int, tuple[int, int]]:
    reader = call(sock, API_VERSIONS, 0, 1, b"")
    error = reader.int16()
    if error not in (0, ERR_UNSUPPORTED_VERSION):
        raise NotReady(f"ApiVersions error_code {error}")
    apis = {}
    for _ in range(reader.int32()):
        key, low, high = reader.int16(), reader.int16(), reader.int16()
        apis[key] = (low, high)
    if error != 0:
        raise NotReady(f"ApiVersions error_code {error}")
    return apis


def metadata_request_body(version: int) -> bytes:
    # v0: an empty topic array means "all topics"; v1+: an empty array means
    # "no topics". Either way the broker list comes back.
    body = struct.pack(">i", 0)
    if version >= 4:
        body += b"\x00"  # allow_auto_topic_creation = false
    if version >= 8:
        body += b"\x00\x00"  # include cluster / topic authorized operations = false
    return body


def metadata(sock: socket.socket, version: int):
    reader = call(sock, API_METADATA, version, 2, metadata_request_body(version))
    if version >= 3:
        reader.int32()  # throttle_time_ms
    brokers = []
    for _ in range(reader.int32()):
        node_id, host, port = reader.int32(), reader.string(), reader.int32()
        if version >= 1:
            reader.string()  # rack
        brokers.append((node_id, host, port))
    cluster_id = reader.string() if version >= 2 else None
    controller_id = reader.int32() if version >= 1 else None
    return brokers, cluster_id, controller_id


def probe(host: str, port: int, node_id: int | None, io_timeout: float) -> str:
    with socket.create_connection((host, port), timeout=io_timeout) as sock:
        sock.settimeout(io_timeout)
        apis = api_versions(sock)
        if API_METADATA not in apis:
            raise NotReady("broker does not list the Metadata API yet")
        low, high = apis[API_METADATA]
        version = min(high, 8)  # v9+ use the flexible encoding; not needed here
        if version < low:
            raise NotReady(f"no non-flexible Metadata version in {low}..{high}")
        brokers, cluster_id, controller_id = metadata(sock, version)
    if not brokers:
        raise NotReady("Metadata lists no broker yet")
    if node_id is not None and node_id not in {b[0] for b in brokers}:
        raise NotReady(f"node {node_id} not in Metadata brokers {brokers}")
    listed = ", ".join(f"{b[0]}@{b[1]}:{b[2]}" for b in brokers)
    extra = f", cluster {cluster_id}" if cluster_id else ""
    if controller_id is not None and controller_id >= 0:
        extra += f", controller {controller_id}"
    return f"broker {listed}{extra}"


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")  # a zombie is dead too
    except (FileNotFoundError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PRM_KAFKA_PORT", "19092")))
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds to keep retrying (default 90)")
    parser.add_argument("--node-id", type=int, default=None, help="require this node id in the Metadata broker list")
    parser.add_argument("--pid", type=int, default=None, help="stop waiting if this process exits")
    parser.add_argument("--quiet", "-q", action="store_true")
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout
    delay = 0.1
    last_error = "no attempt made"
    while True:
        remaining = deadline - time.monotonic()
        try:
            summary = probe(args.host, args.port, args.node_id, io_timeout=max(0.5, min(5.0, remaining)))
        except (OSError, NotReady) as exc:
            last_error = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)
        else:
            if not args.quiet:
                print(f"kafka ready at {args.host}:{args.port}: {summary}")
            return 0
        if args.pid is not None and not process_alive(args.pid):
            print(f"kafka process {args.pid} exited before becoming ready (last probe: {last_error})", file=sys.stderr)
            return 2
        if time.monotonic() + delay >= deadline:
            print(
                f"kafka not ready at {args.host}:{args.port} after {args.timeout:g}s (last probe: {last_error})",
                file=sys.stderr,
            )
            return 1
        time.sleep(delay)  # back off between probes, not a readiness guess
        delay = min(delay * 1.5, 1.0)


if __name__ == "__main__":
    sys.exit(main())
