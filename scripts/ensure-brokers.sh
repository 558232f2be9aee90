#!/usr/bin/env bash
# Makes sure the brokers of the outbox tests are reachable: NATS with JetStream on 127.0.0.1:4222
# (or NATS_URL), RabbitMQ on 127.0.0.1:5672 (or AMQP_URL) and moto_server for SQS and Kinesis on
# 127.0.0.1:5000 (or AWS_ENDPOINT_URL). Starts the installed servers when they are not running,
# installs them (apt-get, pip) when they are missing, and fails otherwise: the broker tests fail
# rather than skip.
set -euo pipefail

reachable() {
    # bash's /dev/tcp: no client needed.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_for() {
    local port=$1 seconds=$2
    for _ in $(seq 1 "$seconds"); do
        reachable "$port" && return 0
        sleep 1
    done
    return 1
}

install() {
    if command -v apt-get >/dev/null 2>&1; then
        echo "brokers: installing $1 with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
    fi
}

if [[ -n "${NATS_URL:-}" ]]; then
    echo "nats: using NATS_URL"
elif reachable 4222; then
    echo "nats: using 127.0.0.1:4222"
else
    command -v nats-server >/dev/null 2>&1 || install nats-server
    store="${TMPDIR:-/tmp}/eventrail-nats"
    mkdir -p "$store"
    echo "nats: starting nats-server with JetStream ($store)"
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd "$store" >"$store/server.log" 2>&1 &
    wait_for 4222 20 || { echo "nats: not reachable on 127.0.0.1:4222" >&2; exit 1; }
fi

if [[ -n "${AMQP_URL:-}" ]]; then
    echo "rabbitmq: using AMQP_URL"
elif reachable 5672; then
    echo "rabbitmq: using 127.0.0.1:5672"
else
    command -v rabbitmq-server >/dev/null 2>&1 || install rabbitmq-server
    echo "rabbitmq: starting rabbitmq-server"
    rabbitmq-server -detached >/dev/null 2>&1 || true
    wait_for 5672 90 || { echo "rabbitmq: not reachable on 127.0.0.1:5672" >&2; exit 1; }
fi

# moto_server stands in for Amazon SQS and Kinesis (on 127.0.0.1:5000, or AWS_ENDPOINT_URL).
if [[ -n "${AWS_ENDPOINT_URL:-}" ]]; then
    echo "moto: using AWS_ENDPOINT_URL"
elif reachable 5000; then
    echo "moto: using 127.0.0.1:5000"
else
    if ! command -v moto_server >/dev/null 2>&1; then
        echo "moto: installing moto[server] with pip"
        python3 -m pip install --quiet 'moto[server]' || {
            echo "moto: 'pip install moto[server]' failed; the SQS and Kinesis tests need it" >&2
            exit 1
        }
        hash -r
    fi
    log="${TMPDIR:-/tmp}/eventrail-moto.log"
    echo "moto: starting moto_server on 127.0.0.1:5000 (log: $log)"
    nohup moto_server -H 127.0.0.1 -p 5000 >"$log" 2>&1 &
    wait_for 5000 60 || { echo "moto: not reachable on 127.0.0.1:5000 (see $log)" >&2; exit 1; }
fi

bash "$(dirname "$0")/ensure-pubsub-emulator.sh"
