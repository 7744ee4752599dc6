#!/usr/bin/env bash
# Exits non-zero unless the current network namespace is a private test one: not the host's
# (PID 1's), no default route, and no interface but `lo` and our own corkv* veths.
set -euo pipefail

fail() {
    echo "assert-isolated: $*; refusing to run steering tests here" >&2
    exit 1
}

if [[ $(readlink /proc/self/ns/net) == "$(readlink /proc/1/ns/net 2>/dev/null || true)" ]]; then
    fail "this is the host's network namespace"
fi
if [[ -n $(ip -4 route show default) || -n $(ip -6 route show default) ]]; then
    fail "a default route exists"
fi
while read -r name; do
    case $name in
        lo | corkv*) ;;
        *) fail "unexpected interface $name" ;;
    esac
done < <(ip -o link show | awk -F': ' '{ sub(/@.*/, "", $2); print $2 }')
exit 0
