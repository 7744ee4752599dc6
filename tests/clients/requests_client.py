"""Drives cork with Python `requests`, configured only through the environment
(HTTPS_PROXY and REQUESTS_CA_BUNDLE), as an agent's SDK would be. Prints a JSON report."""
import json
import sys

import requests

base = sys.argv[1]
report = {}
with requests.Session() as s:
    r = s.get(base + "/bytes/2048", timeout=60)
    report["get_status"] = r.status_code
    assert len(r.content) == 2048, len(r.content)
    r = s.post(base + "/echo", json={"hello": "world"}, timeout=60)
    report["echo_method"] = r.json()["method"]
    r = s.post(base + "/echo", json={"token": "CANARY-py-5a5a5a"}, timeout=60)
    report["canary_status"] = r.status_code
    report["canary_rule"] = r.json().get("rule")
print(json.dumps(report))
