"""Drives an MCP server over stdio, as an agent's MCP client would: starts the command given
after `--` (for the tests, `cork mcp proxy ... -- python mcp_server.py`), sends each step of the
JSON file given as the first argument, and prints a JSON array of what came back.

A step is a JSON-RPC message (sent as one line) or {"raw": "text"} (sent as is, one line). After a
message with an "id", a batch, or a raw line, one line is read back (30 s at most); for
notifications nothing is read. The output has one entry per step: the reply parsed as JSON, null
when no reply was expected, or {"timeout": true}.
"""
import json
import queue
import subprocess
import sys
import threading


def main():
    steps = json.load(open(sys.argv[1]))
    cmd = sys.argv[sys.argv.index("--") + 1:]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    lines = queue.Queue()

    def reader():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    out = []
    for step in steps:
        if isinstance(step, dict) and "raw" in step:
            text, expect = step["raw"], True
        else:
            text = json.dumps(step)
            expect = isinstance(step, list) or (isinstance(step, dict) and "id" in step)
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
        if not expect:
            out.append(None)
            continue
        try:
            line = lines.get(timeout=30)
        except queue.Empty:
            out.append({"timeout": True})
            continue
        if line is None:
            out.append({"eof": True})
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"unparsable": line})
    proc.stdin.close()
    code = proc.wait(timeout=30)
    print(json.dumps({"replies": out, "exit": code}))


if __name__ == "__main__":
    main()
