"""Raw HTTP/2 bytes inside a CONNECT tunnel through cork: opens the tunnel, completes a verified
TLS handshake with cork's CA offering only `h2`, sends the connection preface followed by the
frames given as hex, and prints what came back as hex (or `closed` notes). Used for malformed
frames and HPACK garbage that real clients never send.

Usage: h2_raw.py PROXY TARGET CA HEX_FRAMES   (HEX_FRAMES "-" reads them from stdin)"""
import socket
import ssl
import sys

proxy_host, proxy_port = sys.argv[1].rsplit(":", 1)
target, ca = sys.argv[2], sys.argv[3]
frames = bytes.fromhex(sys.stdin.read().strip() if sys.argv[4] == "-" else sys.argv[4])

sock = socket.create_connection((proxy_host, int(proxy_port)), timeout=30)
sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = sock.recv(4096)
    if not chunk:
        break
    head += chunk
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
tls = ctx.wrap_socket(sock, server_hostname=target.rsplit(":", 1)[0])
print("alpn", tls.selected_alpn_protocol())
# Preface, an empty SETTINGS frame, then the caller's frames.
# cork may end the connection before it has read everything (a GOAWAY for a flood): what it
# answered is still read below.
try:
    tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000") + frames)
except (ssl.SSLError, ConnectionError) as e:
    print("send cut", type(e).__name__)
out = b""
try:
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            break
        out += chunk
except (ssl.SSLError, ConnectionError, socket.timeout):
    pass
print("received", out.hex())
