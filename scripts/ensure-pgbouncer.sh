#!/usr/bin/env bash
# Makes sure the pgbouncer binary is installed: the PgBouncer tests start throwaway PgBouncers in
# transaction pooling mode in front of the test server (eventrail_devdb::start_pgbouncer) and fail
# without it. Installs Debian's package with apt-get when we may (root); otherwise prints the command.
set -euo pipefail

if command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]; then
    echo "pgbouncer: $( (command -v pgbouncer || echo /usr/sbin/pgbouncer) | head -n 1)"
    exit 0
fi
if [[ $(id -u 2>/dev/null || echo 1) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    echo "pgbouncer: not installed, installing it with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
    # The tests start their own PgBouncers; the package's service is not needed.
    if command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    fi
    exit 0
fi
echo "pgbouncer: not installed (the PgBouncer tests need it); install it with: sudo apt-get install -y pgbouncer" >&2
exit 1
