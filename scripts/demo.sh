#!/usr/bin/env bash
# Runs the quickstart example against a local PostgreSQL (started if none is reachable).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
exec cargo run --locked -p example-quickstart
