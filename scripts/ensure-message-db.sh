#!/usr/bin/env bash
# Makes sure Message DB's published package (@eventide/message-db) is unpacked in a cache folder,
# so the tests can install it into their databases with its own database/install.sh.
# Prints nothing but progress; the folder is $MESSAGE_DB_HOME (default
# $HOME/.cache/eventrail/message-db) and the package is in $MESSAGE_DB_HOME/node_modules/@eventide/message-db.
set -euo pipefail

version="${MESSAGE_DB_VERSION:-1.3.1}"
home="${MESSAGE_DB_HOME:-$HOME/.cache/eventrail/message-db}"
package="$home/node_modules/@eventide/message-db"

# Installs Debian packages when we may (root with apt-get); otherwise the caller gets the command.
apt_install() {
    if [[ $(id -u 2>/dev/null || echo 1) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "message-db: installing $* with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        return 1
    fi
}

if ! command -v psql >/dev/null 2>&1 && ! apt_install postgresql-client; then
    echo "message-db: psql is missing (Message DB's install.sh needs it); install it with: sudo apt-get install -y postgresql-client" >&2
    exit 1
fi

installed_version() {
    [[ -f "$package/package.json" ]] || return 1
    sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$package/package.json" | head -n 1
}

if [[ "$(installed_version || true)" == "$version" && -f "$package/database/install.sh" ]]; then
    echo "message-db: @eventide/message-db@$version in $home"
    exit 0
fi
if ! command -v npm >/dev/null 2>&1 && ! apt_install npm; then
    echo "message-db: npm is missing (needed once to fetch @eventide/message-db@$version); install Node.js, e.g. sudo apt-get install -y npm" >&2
    exit 1
fi
echo "message-db: installing @eventide/message-db@$version into $home"
mkdir -p "$home"
npm install --prefix "$home" --no-save --no-audit --no-fund --ignore-scripts \
    "@eventide/message-db@$version" >/dev/null
if [[ "$(installed_version || true)" != "$version" || ! -f "$package/database/install.sh" ]]; then
    echo "message-db: npm did not leave database/install.sh in $package" >&2
    exit 1
fi
echo "message-db: @eventide/message-db@$version in $home"
