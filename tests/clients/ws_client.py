"""A real WebSocket client for cork's tests: Python `websockets` through cork, or raw frames.

Usage: ws_client.py [--proxy HOST:PORT [--cork-ca PEM | --forward]] [--no-compression] URL SCENARIO [ARGS...]

With --proxy the client opens a CONNECT tunnel to URL's host through cork and speaks TLS inside
it, trusting only cork's CA; with --forward as well (raw scenarios, ws:// URLs) it sends the
upgrade to cork in absolute form, as a plain-HTTP forward-proxy request. Without --proxy, URL is
dialled directly (cork's `/ws?url=` form).
Prints one JSON report on stdout. Scenarios:
  echo                   a text and a binary message, each echoed
  text MSG               one text message; the reply or the close that follows
  fragments A B ...      one text message sent as fragments A, B, ...
  binary N FRAGS         N pseudo-random bytes as FRAGS fragments (1: one frame), echoed
  inject                 sends "go", collects what comes back until the connection closes
  mcp JSON...            sends each JSON-RPC message in turn and collects each answer
  raw KIND [ARG]         hand-made frames after a hand-made handshake: invalid_utf8,
                         oversized, unmasked, compressed SECRET, text MSG
"""
import argparse
import base64
import hashlib
import json
import os
import random
import select
import socket
import ssl
import struct
import sys
import time
import zlib
from urllib.parse import urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

TIMEOUT = 60
# How long to wait for the server's TLS 1.3 session tickets before the upgrade is sent.
TICKET_WAIT = 2.0
TICKET_QUIET = 0.1


def tunnel(proxy, host, port, ca):
    phost, pport = proxy.rsplit(":", 1)
    sock = socket.create_connection((phost, int(pport)), timeout=TIMEOUT)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise SystemExit(f"proxy closed during CONNECT: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"CONNECT refused: {head!r}")
    return sock, ssl.create_default_context(cafile=ca)


def settled_tls(sock, ctx, hostname):
    """TLS on `sock`, with the server's session tickets already taken in.

    websockets' sync client reads in one thread while another writes, and CPython's SSLSocket is
    not safe for that: a TLS 1.3 NewSessionTicket processed by the reading thread while the
    writing thread sends the upgrade can stall the connection for good. With no cork in between,
    that stalled 42 of 400 connections to a rustls server and 5 of 300 to a Python one; with the
    tickets taken first, none of 400 to either. The library's reader thread starts only after the
    tickets are in; what follows is the library's own."""
    tls = ctx.wrap_socket(sock, server_hostname=hostname)
    tls.setblocking(False)
    deadline = time.monotonic() + TICKET_WAIT
    while (left := deadline - time.monotonic()) > 0:
        has_ticket = tls.session is not None and tls.session.has_ticket
        # Once a ticket is in, a short quiet spell says the rest of the flight is in too.
        readable, _, _ = select.select([tls], [], [], min(left, TICKET_QUIET) if has_ticket else left)
        if not readable and has_ticket:
            break
        try:
            if tls.recv(1):
                raise SystemExit("the server sent data before the upgrade request")
            break  # closed: the handshake that follows reports it
        except ssl.SSLWantReadError:
            pass  # post-handshake messages only
    tls.setblocking(True)
    return tls


def closed_info(exc):
    rcvd = getattr(exc, "rcvd", None)
    return {"close_code": rcvd.code if rcvd else None, "close_reason": rcvd.reason if rcvd else None, "error": type(exc).__name__}


def payload(n):
    return random.Random(6455).randbytes(n)


def with_websockets(args, url):
    kwargs = {"max_size": None, "open_timeout": TIMEOUT, "close_timeout": 10}
    if args.no_compression:
        kwargs["compression"] = None
    target = args.url
    if args.proxy:
        sock, ctx = tunnel(args.proxy, url.hostname, url.port or 443, args.cork_ca)
        kwargs["sock"] = settled_tls(sock, ctx, url.hostname)
        # TLS is already up on the socket: the library speaks the upgrade over it as given.
        target = args.url.replace("wss://", "ws://", 1)
    report = {}
    with connect(target, **kwargs) as ws:
        report["extensions"] = [e.name for e in ws.protocol.extensions]
        report["response_extensions"] = ws.response.headers.get("Sec-WebSocket-Extensions")
        try:
            run_scenario(ws, args.scenario, args.args, report)
        except ConnectionClosed as e:
            report.update(closed_info(e))
        except TimeoutError:
            report["error"] = "timeout"
    return report


def run_scenario(ws, scenario, rest, report):
    if scenario == "echo":
        ws.send("hello cork")
        report["echo_text"] = ws.recv(timeout=TIMEOUT)
        data = bytes(range(256)) * 4
        ws.send(data)
        back = ws.recv(timeout=TIMEOUT)
        report["echo_binary_ok"] = back == data
    elif scenario == "text":
        ws.send(rest[0])
        report["reply"] = ws.recv(timeout=TIMEOUT)
    elif scenario == "fragments":
        ws.send(list(rest))
        report["reply"] = ws.recv(timeout=TIMEOUT)
    elif scenario == "binary":
        n, frags = int(rest[0]), int(rest[1])
        data = payload(n)
        report["sent_sha256"] = hashlib.sha256(data).hexdigest()
        if frags <= 1:
            ws.send(data)
        else:
            step = -(-n // frags)
            ws.send([data[i:i + step] for i in range(0, n, step)])
        back = ws.recv(timeout=TIMEOUT)
        report["recv_len"] = len(back)
        report["recv_sha256"] = hashlib.sha256(back).hexdigest()
    elif scenario == "inject":
        ws.send("go")
        report["messages"] = []
        while True:
            report["messages"].append(ws.recv(timeout=TIMEOUT))
    elif scenario == "mcp":
        report["answers"] = []
        for message in rest:
            ws.send(message)
            report["answers"].append(json.loads(ws.recv(timeout=TIMEOUT)))
    else:
        raise SystemExit(f"unknown scenario {scenario}")


def frame(opcode, data, fin=True, rsv1=False, mask=True):
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if mask else 0
    if len(data) < 126:
        head += bytes([bit | len(data)])
    elif len(data) < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", len(data))
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", len(data))
    if not mask:
        return head + data
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(data))


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return out


def read_frame(sock):
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    return b0 & 0x0F, read_exact(sock, n)


def raw(args, url):
    port = url.port or (443 if url.scheme == "wss" else 80)
    path = url.path or "/"
    if url.query:
        path += "?" + url.query
    if args.proxy and args.forward:
        phost, pport = args.proxy.rsplit(":", 1)
        sock = socket.create_connection((phost, int(pport)), timeout=TIMEOUT)
        path = f"http://{url.netloc}{path}"
    elif args.proxy:
        sock, ctx = tunnel(args.proxy, url.hostname, port, args.cork_ca)
        sock = ctx.wrap_socket(sock, server_hostname=url.hostname)
    else:
        sock = socket.create_connection((url.hostname, port), timeout=TIMEOUT)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += read_exact(sock, 1)
    lines = head.decode("latin-1").split("\r\n")
    report = {"status_line": lines[0], "response_headers": [l for l in lines[1:] if l]}
    kind, rest = args.args[0], args.args[1:]
    if kind == "invalid_utf8":
        sock.sendall(frame(0x1, b"valid start \xff\xfe then not UTF-8"))
    elif kind == "oversized":
        # A header announcing 64 GiB, then a little of it: refused on the header alone.
        sock.sendall(bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 36) + os.urandom(4) + b"x" * 1024)
    elif kind == "unmasked":
        sock.sendall(frame(0x1, b"not masked", mask=False))
    elif kind == "text":
        sock.sendall(frame(0x1, rest[0].encode()))
    elif kind == "compressed":
        c = zlib.compressobj(wbits=-15)
        data = c.compress(rest[0].encode()) + c.flush(zlib.Z_SYNC_FLUSH)
        sock.sendall(frame(0x1, data[:-4], rsv1=True))
    else:
        raise SystemExit(f"unknown raw kind {kind}")
    report["frames"] = []
    try:
        while True:
            opcode, data = read_frame(sock)
            if opcode == 0x8:
                report["close_code"] = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                report["close_reason"] = data[2:].decode("utf-8", "replace")
                break
            report["frames"].append({"opcode": opcode, "len": len(data)})
            if opcode == 0x1 and kind == "text":
                # The echo came back: close the session properly and wait for the answer.
                report["reply"] = data.decode()
                sock.sendall(frame(0x8, struct.pack("!H", 1000)))
    except (EOFError, ConnectionError, ssl.SSLError, socket.timeout) as e:
        report["error"] = type(e).__name__
    return report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--proxy")
    p.add_argument("--cork-ca")
    p.add_argument("--no-compression", action="store_true")
    p.add_argument("--forward", action="store_true")
    p.add_argument("url")
    p.add_argument("scenario")
    p.add_argument("args", nargs="*")
    args = p.parse_args()
    url = urlsplit(args.url)
    report = raw(args, url) if args.scenario == "raw" else with_websockets(args, url)
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
