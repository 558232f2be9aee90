#!/usr/bin/env bash
# Makes sure a PostgreSQL is usable: DATABASE_URL, or one on 127.0.0.1:5432, or at least the
# server binaries, so that eventrail-devdb can start a throwaway cluster. Installs PostgreSQL with
# apt-get when nothing is there.
set -euo pipefail

have_bins() {
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 && return 0
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

if [[ -n "${DATABASE_URL:-}" ]]; then
    echo "postgres: using DATABASE_URL"
    exit 0
fi
if reachable 127.0.0.1 5432; then
    echo "postgres: using 127.0.0.1:5432"
    exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    echo "postgres: starting the installed cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for 127.0.0.1 5432 30 && exit 0
fi
if ! have_bins; then
    if [[ $(id -u) -ne 0 ]]; then
        echo "postgres: no PostgreSQL found; install it with: sudo apt-get install -y postgresql" >&2
        exit 1
    fi
    echo "postgres: no PostgreSQL found, installing it with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
echo "postgres: nothing listens on 5432; eventrail-devdb will start a throwaway cluster"
