"""A raw HTTP/1.1 client inside a CONNECT tunnel through cork: it opens the tunnel, completes a
verified TLS handshake with cork's CA (stdlib ssl), sends the bytes it is given verbatim, and
prints what comes back. Used for malformed and smuggling-shaped requests that well-behaved
clients refuse to send."""
import socket
import ssl
import sys

proxy_host, proxy_port = sys.argv[1].rsplit(":", 1)
target = sys.argv[2]          # host:port
ca = sys.argv[3]
payload = sys.argv[4].encode().decode("unicode_escape").encode("latin-1")

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
tls = ctx.wrap_socket(sock, server_hostname=target.rsplit(":", 1)[0])
tls.sendall(payload)
out = b""
try:
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            break
        out += chunk
except (ssl.SSLError, ConnectionError, socket.timeout):
    pass
sys.stdout.write(out.decode("latin-1"))
