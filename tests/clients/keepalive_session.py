"""One `requests` session (one keep-alive connection): a request, then waits for a line on
stdin, then a second request on the same session. Lets a test act between the two."""
import sys

import requests

base = sys.argv[1]
with requests.Session() as s:
    r = s.get(base + "/text/one", timeout=60)
    print("first", r.status_code, flush=True)
    sys.stdin.readline()
    r = s.get(base + "/text/two", timeout=60)
    print("second", r.status_code, flush=True)
