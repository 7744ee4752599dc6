"""Python `requests` with no proxy settings, inside a bottle: names resolve through the bottle's
DNS guard (the test bind-mounts a resolv.conf naming any address; UDP/53 is steered to cork) and
TLS is trusted through REQUESTS_CA_BUNDLE, which cork sets. Prints a JSON report."""
import json
import socket
import sys

import requests

base, canary, exfil_name = sys.argv[1:4]
report = {}
for env in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
    assert env not in __import__("os").environ, env
with requests.Session() as s:
    r = s.get(base + "/bytes/2048", timeout=60)
    report["get_status"] = r.status_code
    report["get_length"] = len(r.content)
    r = s.post(base + "/echo", json={"token": canary}, timeout=60)
    report["canary_status"] = r.status_code
    report["canary_rule"] = r.json().get("rule")


def resolve(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 443, socket.AF_INET)})
    except socket.gaierror as e:
        return "gaierror %d" % e.errno


report["origin"] = resolve("origin.test")
report["evil"] = resolve("evil.test")
report["exfil"] = resolve(exfil_name)
print(json.dumps(report))
