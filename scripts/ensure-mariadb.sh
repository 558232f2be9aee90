#!/usr/bin/env bash
# Makes sure MariaDB answers on 127.0.0.1:3306 for the outbox's MySQL tests, as root without a
# password (or uses EVENTRAIL_MYSQL_URL when it is set). Starts the installed server when it is
# stopped, installs Debian's mariadb-server with apt-get when it is missing, and fails otherwise:
# the MySQL tests fail rather than skip.
set -euo pipefail

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

if [[ -n "${EVENTRAIL_MYSQL_URL:-}" ]]; then
    echo "mariadb: using EVENTRAIL_MYSQL_URL"
    exit 0
fi

# login: root logs in over TCP on 127.0.0.1 without a password (what the tests do).
login() {
    mariadb --protocol=tcp -h 127.0.0.1 -P 3306 -u root -e "SELECT 1" >/dev/null 2>&1
}

if reachable 127.0.0.1 3306 && { ! command -v mariadb >/dev/null 2>&1 || login; }; then
    echo "mariadb: using 127.0.0.1:3306"
    exit 0
fi

if ! command -v mariadbd >/dev/null 2>&1; then
    echo "mariadb: mariadb-server is not installed; installing it with apt-get"
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "mariadb: no apt-get here: install MariaDB 10.6+ (or MySQL 8) on 127.0.0.1:3306, or set EVENTRAIL_MYSQL_URL" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mariadb-server >/dev/null
fi

if ! reachable 127.0.0.1 3306; then
    # Loopback only, and no host name lookups, so that root@127.0.0.1 is the account that
    # matches the tests' TCP connections.
    if [[ -d /etc/mysql/mariadb.conf.d ]]; then
        printf '[mariadbd]\nbind-address = 127.0.0.1\nport = 3306\nskip-name-resolve\n' \
            >/etc/mysql/mariadb.conf.d/60-eventrail-tests.cnf
    fi
    echo "mariadb: starting the server"
    # Debian's init script (no systemd needed); it may report a failure of its own checks
    # (a missing debian.cnf) although the server came up, so the port decides.
    service mariadb start >/dev/null 2>&1 || true
    if ! wait_for 127.0.0.1 3306 10; then
        mkdir -p /run/mysqld
        chown mysql:mysql /run/mysqld 2>/dev/null || true
        log="${TMPDIR:-/tmp}/eventrail-mariadb.log"
        echo "mariadb: not up after 'service mariadb start'; starting mysqld_safe (log: $log)"
        nohup mysqld_safe >"$log" 2>&1 &
    fi
    wait_for 127.0.0.1 3306 60 || {
        echo "mariadb: not reachable on 127.0.0.1:3306" >&2
        exit 1
    }
fi

if ! login; then
    # A fresh Debian install lets the system's root in through the socket only.
    echo "mariadb: letting root in from 127.0.0.1 without a password (a loopback test server)"
    mariadb -u root -e "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '';
        GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; FLUSH PRIVILEGES;"
    login || {
        echo "mariadb: root cannot log in over TCP on 127.0.0.1:3306 without a password" >&2
        exit 1
    }
fi
echo "mariadb: ready on 127.0.0.1:3306"
