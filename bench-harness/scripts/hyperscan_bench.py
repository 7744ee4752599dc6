#!/usr/bin/env python3
"""Hyperscan baseline for the scanner benchmark.

Usage: hyperscan_bench.py CORPUS_FILE
Compiles a comparable set of secret patterns into one Hyperscan database, scans the corpus
three times and prints the best GB/s on the last line. Exits 2 with a message on stderr when
the `hyperscan` Python module is missing; bench_harness::scan installs the PyPI wheel (which
bundles libhs, no system package needed) into the repository's .tools/venv and runs this
script with that interpreter.
"""
import sys
import time

PATTERNS = [
    rb"(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}", rb"AIza[0-9A-Za-z_\-]{35}", rb"GOCSPX-[0-9A-Za-z_\-]{28}",
    rb"AccountKey=[A-Za-z0-9+/]{86}==", rb"ghp_[A-Za-z0-9]{36}", rb"github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59}",
    rb"gho_[A-Za-z0-9]{36}", rb"ghu_[A-Za-z0-9]{36}", rb"ghs_[A-Za-z0-9]{36}", rb"ghr_[A-Za-z0-9]{36,76}",
    rb"glpat-[A-Za-z0-9_\-]{20,40}", rb"glptt-[0-9a-f]{40}", rb"glrt-[A-Za-z0-9_\-]{20,40}",
    rb"xoxb-[0-9]{10,13}-[0-9]{10,13}-[A-Za-z0-9]{24,34}", rb"xoxp-[0-9]{10,13}-[0-9]{10,13}-[0-9]{10,13}-[a-f0-9]{32}",
    rb"xapp-\d-[A-Z0-9]{9,12}-\d{10,14}-[a-f0-9]{64}", rb"hooks\.slack\.com/services/T[A-Z0-9]{8,12}/B[A-Z0-9]{8,12}/[A-Za-z0-9]{24}",
    rb"sk_live_[0-9A-Za-z]{24,99}", rb"rk_live_[0-9A-Za-z]{24,99}", rb"sk_test_[0-9A-Za-z]{24,99}", rb"whsec_[0-9A-Za-z]{32,88}",
    rb"sk-ant-api[0-9]{2}-[A-Za-z0-9_\-]{80,120}", rb"sk-proj-[A-Za-z0-9_\-]{40,200}", rb"hf_[A-Za-z]{34}",
    rb"api_org_[A-Za-z]{34}", rb"npm_[A-Za-z0-9]{36}", rb"pypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,300}",
    rb"dckr_pat_[A-Za-z0-9_\-]{27}", rb"SK[0-9a-fA-F]{32}", rb"SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}",
    rb"key-[0-9a-f]{32}", rb"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}", rb"[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}",
    rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----", rb"-----BEGIN PGP PRIVATE KEY BLOCK-----",
    rb"eyJ[A-Za-z0-9_\-]{10,}\.eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}",
    rb"(?:postgres(?:ql)?|mysql|mongodb(?:\+srv)?|rediss?|amqps?)://[^\s:/@]{0,64}:[^\s@/]{3,128}@[A-Za-z0-9.\-]+",
    rb"dop_v1_[a-f0-9]{64}", rb"hvs\.[A-Za-z0-9_\-]{90,200}", rb"pul-[a-f0-9]{40}", rb"lin_api_[A-Za-z0-9]{40}",
    rb"gsk_[A-Za-z0-9]{52}", rb"xai-[A-Za-z0-9]{80}", rb"r8_[A-Za-z0-9]{37}", rb"PMAK-[a-f0-9]{24}-[a-f0-9]{34}",
    rb"NRAK-[A-Z0-9]{27}", rb"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}", rb"dp\.pt\.[A-Za-z0-9]{40,44}",
    rb"(?:4[0-9]{12}(?:[0-9]{3})?|5[1-5][0-9]{14}|3[47][0-9]{13})", rb"[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}",
    rb"[5KL][1-9A-HJ-NP-Za-km-z]{50,51}", rb"(?i)(?:password|passwd|pwd)[\"']?\s*[:=]\s*[\"'][^\"'\s]{8,64}[\"']",
]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        import hyperscan  # type: ignore
    except ImportError:
        print("python module 'hyperscan' not installed (pip install hyperscan)", file=sys.stderr)
        return 2
    data = open(sys.argv[1], "rb").read()
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    flags = [hyperscan.HS_FLAG_SOM_LEFTMOST | hyperscan.HS_FLAG_ALLOWEMPTY] * len(PATTERNS)
    try:
        db.compile(expressions=PATTERNS, ids=list(range(len(PATTERNS))), elements=len(PATTERNS), flags=flags)
    except Exception as e:  # fall back without start-of-match, which some patterns cannot do
        flags = [0] * len(PATTERNS)
        db.compile(expressions=PATTERNS, ids=list(range(len(PATTERNS))), elements=len(PATTERNS), flags=flags)
        print(f"compiled without SOM_LEFTMOST: {e}", file=sys.stderr)
    count = 0

    def on_match(_id, _from, _to, _flags, _ctx):
        nonlocal count
        count += 1
        return None

    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        db.scan(data, match_event_handler=on_match)
        best = min(best, time.perf_counter() - t)
    print(f"matches {count // 3}", file=sys.stderr)
    print(f"{len(data) / 1e9 / best:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
