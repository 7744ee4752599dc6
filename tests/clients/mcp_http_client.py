"""An MCP client over streamable HTTP, as an agent's SDK would run it: Python `requests`,
configured only through the environment (HTTPS_PROXY, REQUESTS_CA_BUNDLE); with --h2, `httpx`
over HTTP/2 (same environment), and each entry also carries "http_version".

Usage: mcp_http_client.py URL STEPS.json [--h2]

Each step (a JSON-RPC message or batch) is POSTed to URL with `Accept: application/json,
text/event-stream`; the `Mcp-Session-Id` the server gives on initialize is sent afterwards. Prints
a JSON array with one entry per step: {"status": N, "messages": [...]} where messages are the
JSON-RPC messages of a JSON or SSE response, or {"status": N, "body": ...} for anything else
(cork's 403 refusals are JSON bodies without "jsonrpc").
"""
import json
import sys

import requests


def sse_messages(text):
    out = []
    for event in text.replace("\r\n", "\n").split("\n\n"):
        data = [line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:")]
        if data:
            out.append(json.loads("\n".join(data)))
    return out


def main():
    url, steps = sys.argv[1], json.load(open(sys.argv[2]))
    h2 = "--h2" in sys.argv
    session_id = None
    out = []
    if h2:
        import os

        import httpx

        client = httpx.Client(http2=True, http1=False, verify=os.environ["REQUESTS_CA_BUNDLE"], trust_env=True, timeout=60)
        errors = (httpx.HTTPError,)
    else:
        client = requests.Session()
        errors = (requests.RequestException,)
    with client as s:
        for step in steps:
            headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
            if session_id:
                headers["Mcp-Session-Id"] = session_id
            try:
                if h2:
                    r = s.post(url, content=json.dumps(step), headers=headers)
                else:
                    r = s.post(url, data=json.dumps(step), headers=headers, timeout=60)
            except errors as e:
                out.append({"error": type(e).__name__})
                continue
            session_id = r.headers.get("Mcp-Session-Id", session_id)
            ctype = r.headers.get("Content-Type", "").split(";")[0].strip()
            if ctype == "text/event-stream":
                entry = {"status": r.status_code, "messages": sse_messages(r.text)}
            elif ctype == "application/json":
                body = r.json()
                if isinstance(body, dict) and "jsonrpc" not in body:
                    entry = {"status": r.status_code, "body": body}
                else:
                    entry = {"status": r.status_code, "messages": body if isinstance(body, list) else [body]}
            else:
                entry = {"status": r.status_code, "body": r.text}
            if h2:
                entry["http_version"] = r.http_version
            out.append(entry)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
