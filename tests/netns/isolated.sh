#!/usr/bin/env bash
# Runs COMMAND inside a fresh, private network namespace that has only `lo` (up) and no route
# out, after checking exactly that with assert-isolated.sh. Steering tests run only in here, so
# nothing they send can leave the machine.
#
#   tests/netns/isolated.sh COMMAND [ARGS...]
#
# Inside, CORK_NETNS_ISOLATED=1 is set. Veth pairs a test adds must be named corkv* and keep
# both ends in this namespace.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: $0 COMMAND [ARGS...]" >&2
    exit 2
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "isolated.sh: creating a network namespace needs root" >&2
    exit 2
fi

here=$(dirname "$(readlink -f "$0")")
# Only the network namespace is new: the cgroup hierarchy and cork's bpffs stay shared, as they
# are for cork itself.
exec unshare --net -- bash -c '
    set -euo pipefail
    here=$1; shift
    ip link set lo up
    "$here/assert-isolated.sh"
    export CORK_NETNS_ISOLATED=1
    exec "$@"
' isolated "$here" "$@"
