"""Two refused HTTP/2 uploads on one connection through cork, with the `h2` library, to see how
cork ends a stream whose request it refused while the client was still uploading.

Stream 1 sends its head and a first DATA frame carrying SECRET, reads the whole refusal, then
sends the rest of its body with END_STREAM and a PING: what cork sent on stream 1 before the
PING's ACK is recorded. Stream 3 does the same but never finishes its body: it waits (up to 30 s)
for cork to end the stream.

Usage: h2_refused_upload.py PROXY TARGET CA PATH SECRET
Prints one JSON object: per stream, the status, the refusal's body, the RST_STREAM codes cork
sent, and whether the client's END_STREAM was taken."""
import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions

proxy_host, proxy_port = sys.argv[1].rsplit(":", 1)
target, ca, path, secret = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

sock = socket.create_connection((proxy_host, int(proxy_port)), timeout=30)
sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
head = b""
while b"\r\n\r\n" not in head:
    chunk = sock.recv(4096)
    assert chunk, head
    head += chunk
assert head.startswith(b"HTTP/1.1 200"), head
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
tls = ctx.wrap_socket(sock, server_hostname=target.rsplit(":", 1)[0])
assert tls.selected_alpn_protocol() == "h2", tls.selected_alpn_protocol()

conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
tls.sendall(conn.data_to_send())
streams = {}


def pump(until):
    """Reads frames until `until()` holds or the connection ends; returns False on the end."""
    while not until():
        data = tls.recv(65536)
        if not data:
            return False
        for event in conn.receive_data(data):
            s = streams.get(getattr(event, "stream_id", None))
            if isinstance(event, h2.events.ResponseReceived):
                s["status"] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                s["body"] += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                s["answered"] = True
            elif isinstance(event, h2.events.StreamReset):
                s["resets"].append(event.error_code)
            elif isinstance(event, h2.events.PingAckReceived):
                state["pong"] = True
        tls.sendall(conn.data_to_send())
    return True


def send_body(stream_id, data, end):
    """Sends `data` in frames of the largest size cork allows, once its windows admit it all."""
    pump(lambda: conn.local_flow_control_window(stream_id) >= len(data))
    step = conn.max_outbound_frame_size
    for at in range(0, len(data), step):
        conn.send_data(stream_id, data[at:at + step], end_stream=end and at + step >= len(data))
    tls.sendall(conn.data_to_send())


def refused(stream_id):
    """Opens a POST whose first 100 KB carry the secret (more than cork's scan batch, so it is
    judged before the body ends), and reads the whole answer."""
    streams[stream_id] = {"status": None, "body": b"", "answered": False, "resets": [], "end_taken": None}
    conn.send_headers(stream_id, [(":method", "POST"), (":scheme", "https"), (":authority", target), (":path", path), ("content-type", "application/octet-stream")])
    tls.sendall(conn.data_to_send())
    send_body(stream_id, b"x" * 2000 + f"\ntoken={secret}\n".encode() + b"y" * 100000, False)
    pump(lambda: streams[stream_id]["answered"] or streams[stream_id]["resets"])


state = {"pong": False}
refused(1)
try:
    send_body(1, b"z" * 30000, True)
    streams[1]["end_taken"] = True
except h2.exceptions.StreamClosedError:
    # The stream was reset already: its END_STREAM cannot be sent.
    streams[1]["end_taken"] = False
conn.ping(b"corkping")
tls.sendall(conn.data_to_send())
pump(lambda: state["pong"])

refused(3)
pump(lambda: bool(streams[3]["resets"]))
for s in streams.values():
    s["body"] = s["body"].decode(errors="replace")
print(json.dumps({"streams": streams, "pong": state["pong"]}))
