#!/usr/bin/env bash
# Makes sure the brokers of the outbox tests are reachable: NATS with JetStream on 127.0.0.1:4222
# (or NATS_URL), RabbitMQ on 127.0.0.1:5672 (or AMQP_URL) and moto_server for SQS and Kinesis on
# 127.0.0.1:5000 (or AWS_ENDPOINT_URL). Starts the installed servers when they are not running,
# installs them (apt-get, pip) when they are missing, and fails otherwise: the broker tests fail
# rather than skip.
set -euo pipefail

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

install() {
    if command -v apt-get >/dev/null 2>&1; then
        echo "brokers: installing $1 with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
    fi
}

start_nats() {
    command -v nats-server >/dev/null 2>&1 || install nats-server
    local store="${TMPDIR:-/tmp}/eventrail-nats"
    mkdir -p "$store"
    echo "nats: starting nats-server with JetStream ($store)"
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$store" >"$store/server.log" 2>&1 &
}

start_rabbitmq() {
    command -v rabbitmq-server >/dev/null 2>&1 || install rabbitmq-server
    echo "rabbitmq: starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
}

# moto_server stands in for Amazon SQS and Kinesis.
start_moto() {
    if ! command -v moto_server >/dev/null 2>&1; then
        echo "moto: installing moto[server] with pip"
        python3 -m pip install --quiet 'moto[server]' || {
            echo "moto: 'pip install moto[server]' failed; the SQS and Kinesis tests need it" >&2
            exit 1
        }
        hash -r
    fi
    local log="${TMPDIR:-/tmp}/eventrail-moto.log"
    echo "moto: starting moto_server on 127.0.0.1:5000 (log: $log)"
    nohup moto_server -H 127.0.0.1 -p 5000 >"$log" 2>&1 &
}

# ensure NAME VARIABLE PORT SECONDS START: the server named by the environment VARIABLE when it is
# set, else the one on 127.0.0.1:PORT, else START one and wait up to SECONDS for it to answer.
ensure() {
    local name=$1 variable=$2 port=$3 seconds=$4 start=$5
    if [[ -n "${!variable:-}" ]]; then
        echo "$name: using $variable"
    elif reachable 127.0.0.1 "$port"; then
        echo "$name: using 127.0.0.1:$port"
    else
        "$start"
        wait_for 127.0.0.1 "$port" "$seconds" || {
            echo "$name: not reachable on 127.0.0.1:$port" >&2
            exit 1
        }
    fi
}

ensure nats NATS_URL 4222 20 start_nats
ensure rabbitmq AMQP_URL 5672 90 start_rabbitmq
ensure moto AWS_ENDPOINT_URL 5000 60 start_moto
bash "$(dirname "$0")/ensure-pubsub-emulator.sh"
