#!/usr/bin/env bash
# Makes sure the tools the build itself needs are installed: `protoc` (Debian's
# protobuf-compiler), which etcd-client's build script runs to compile etcd's gRPC protos
# (the worker's `etcd` feature; every --all-features build). Installs it with apt-get when
# missing, and fails otherwise.
set -euo pipefail

if command -v protoc >/dev/null 2>&1 || [[ -n "${PROTOC:-}" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "build tools: protoc is missing and there is no apt-get; install protobuf-compiler (or set PROTOC)" >&2
    exit 1
fi
echo "build tools: installing protobuf-compiler (protoc) with apt-get, for etcd-client's build"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler >/dev/null
