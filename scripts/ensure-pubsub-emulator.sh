#!/usr/bin/env bash
# Makes sure the Google Pub/Sub emulator of the outbox's Pub/Sub test is reachable on
# 127.0.0.1:8085 (or PUBSUB_EMULATOR_HOST, host:port). Starts the emulator of an installed Google
# Cloud SDK in the background when nothing answers there, and fails otherwise: the Pub/Sub test
# fails rather than skips. The emulator is a Java program shipped as the SDK's `pubsub-emulator`
# component (not a Debian package); it runs offline and needs Java 8 or later.
set -euo pipefail

endpoint="${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}"
host="${endpoint%:*}"
port="${endpoint##*:}"
log="${TMPDIR:-/tmp}/eventrail-pubsub-emulator.log"

# shellcheck source=scripts/ports.sh
source "$(dirname "$0")/ports.sh"

if reachable "$host" "$port"; then
    echo "pubsub: using $host:$port"
    exit 0
fi

# The emulator's own launcher: faster than `gcloud beta emulators pubsub start`, and it never
# prompts or looks for updates.
launcher=""
for root in "${CLOUDSDK_ROOT_DIR:-}" /usr/lib/google-cloud-sdk /usr/share/google-cloud-sdk \
    /opt/google-cloud-sdk "$HOME/google-cloud-sdk"; do
    if [[ -n "$root" && -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]]; then
        launcher="$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
        break
    fi
done
if [[ -z "$launcher" ]] && command -v gcloud >/dev/null 2>&1; then
    root="$(CLOUDSDK_CORE_DISABLE_PROMPTS=1 gcloud info --format='value(installation.sdk_root)' 2>/dev/null || true)"
    if [[ -n "$root" && -x "$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator" ]]; then
        launcher="$root/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
    fi
fi
if [[ -z "$launcher" ]]; then
    cat >&2 <<'EOF'
pubsub: no emulator answers on the Pub/Sub endpoint and none is installed.
  Install the Google Cloud SDK (https://cloud.google.com/sdk/docs/install) and its emulator:
      gcloud components install pubsub-emulator
  or, with the SDK from Google's apt repository: apt-get install google-cloud-cli-pubsub-emulator
  It needs Java (e.g. apt-get install openjdk-17-jre-headless). Or point PUBSUB_EMULATOR_HOST
  (host:port) at a running emulator.
EOF
    exit 1
fi
if ! command -v java >/dev/null 2>&1 && [[ -z "${JAVA_HOME:-}" ]]; then
    echo "pubsub: the emulator needs Java: apt-get install openjdk-17-jre-headless" >&2
    exit 1
fi

echo "pubsub: starting $launcher on $host:$port (log: $log)"
nohup "$launcher" --host="$host" --port="$port" >"$log" 2>&1 &
if wait_for "$host" "$port" 60; then
    echo "pubsub: emulator up on $host:$port"
    exit 0
fi
echo "pubsub: the emulator did not answer on $host:$port within 60 s; see $log" >&2
exit 1
