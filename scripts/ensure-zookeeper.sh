#!/usr/bin/env bash
# Makes sure a ZooKeeper server answers for the ZooKeeper leader election tests:
# ZOOKEEPER_CONNECT when set, else 127.0.0.1:2181. Starts Debian's ZooKeeper standalone (data
# under $TMPDIR, a 500 ms tick so that sessions may be short) on loopback when nothing answers
# there, installs `zookeeperd` with apt-get when it is missing, and fails otherwise: the election
# tests fail rather than skip. (Tests that freeze or stop ZooKeeper start their own on free
# ports.)
set -euo pipefail

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

jar=/usr/share/java/zookeeper.jar
if [[ -n "${ZOOKEEPER_CONNECT:-}" ]]; then
    echo "zookeeper: using ZOOKEEPER_CONNECT ($ZOOKEEPER_CONNECT)"
    exit 0
fi
if reachable 127.0.0.1 2181; then
    echo "zookeeper: using 127.0.0.1:2181"
    exit 0
fi
if [[ ! -f "$jar" ]] || ! command -v java >/dev/null 2>&1; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "zookeeper: not installed and no apt-get to install it; install zookeeperd" >&2
        exit 1
    fi
    echo "zookeeper: not installed, installing zookeeperd with apt-get"
    apt-get update -qq
    # policy-rc.d or no init: the package's own service may not start; this script starts it.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeperd >/dev/null
fi
dir="${TMPDIR:-/tmp}/eventrail-zookeeper"
mkdir -p "$dir/data"
cat >"$dir/zoo.cfg" <<CFG
tickTime=500
dataDir=$dir/data
clientPort=2181
clientPortAddress=127.0.0.1
minSessionTimeout=1000
maxSessionTimeout=30000
admin.enableServer=false
CFG
echo "zookeeper: starting ZooKeeper on 127.0.0.1:2181 (data and log: $dir)"
nohup java -cp "/etc/zookeeper/conf:$jar" "-Dzookeeper.log.dir=$dir" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/zoo.cfg" >"$dir/zookeeper.log" 2>&1 &
wait_for 127.0.0.1 2181 60 || {
    echo "zookeeper: not reachable on 127.0.0.1:2181; see $dir/zookeeper.log" >&2
    exit 1
}
