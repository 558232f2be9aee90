#!/usr/bin/env bash
# Makes sure an etcd server answers for the etcd leader election tests: ETCD_ENDPOINT when set,
# else 127.0.0.1:2379. Starts Debian's etcd (one member, data under $TMPDIR) on loopback when
# nothing answers there, installs `etcd-server` with apt-get when etcd is missing, and fails
# otherwise: the election tests fail rather than skip. (Tests that freeze or stop etcd start
# their own on free ports.)
set -euo pipefail

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

if [[ -n "${ETCD_ENDPOINT:-}" ]]; then
    echo "etcd: using ETCD_ENDPOINT ($ETCD_ENDPOINT)"
    exit 0
fi
if reachable 127.0.0.1 2379; then
    echo "etcd: using 127.0.0.1:2379"
    exit 0
fi
if ! command -v etcd >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "etcd: not installed and no apt-get to install it; install etcd-server" >&2
        exit 1
    fi
    echo "etcd: not installed, installing etcd-server with apt-get"
    apt-get update -qq
    # policy-rc.d or no init: the package's own service may not start; this script starts it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
dir="${TMPDIR:-/tmp}/eventrail-etcd"
mkdir -p "$dir"
echo "etcd: starting etcd on 127.0.0.1:2379 (data and log: $dir)"
nohup etcd --name eventrail --data-dir "$dir/data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster eventrail=http://127.0.0.1:2380 >"$dir/etcd.log" 2>&1 &
wait_for 127.0.0.1 2379 30 || {
    echo "etcd: not reachable on 127.0.0.1:2379; see $dir/etcd.log" >&2
    exit 1
}
