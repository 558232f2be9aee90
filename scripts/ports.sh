# Sourced by the ensure-* scripts: is a TCP port answering, and waiting until it does.

# reachable HOST PORT: something accepts connections there (bash's /dev/tcp: no client needed).
reachable() {
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

# wait_for HOST PORT SECONDS: polls once a second until the port answers; fails after SECONDS.
wait_for() {
    local host=$1 port=$2 seconds=$3
    for _ in $(seq 1 "$seconds"); do
        reachable "$host" "$port" && return 0
        sleep 1
    done
    return 1
}
