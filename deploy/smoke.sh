#!/usr/bin/env bash
# Runs the compose cluster of README "Running a cluster" and checks that it works: three
# agents in two zones register, a topic is created, 1,000 records produced through the CLI
# service are all read back, the compactor completes a cycle, and after `kill` of one agent
# its zone's clients still produce and read everything. Removes the cluster (and its
# volumes) at the end, passed or failed. Run by tests/tests/compose.rs.
#
# Images: cairn:local from BINARY (deploy/build-image.sh); postgres and localstack from a
# registry when one answers, else (or with CAIRN_LOCAL_DEPS=1) the stand-ins of
# deploy/build-local-deps.sh. Prometheus and Grafana (profile "observe") are started only
# when their images are present.
#
# Usage: deploy/smoke.sh [BINARY]   (default: target/release/cairn)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
log() { echo "deploy/smoke.sh: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    die "neither \`docker compose\` nor docker-compose is installed"
fi

bash "$here/build-image.sh" "$@" >/dev/null

# Uses $2 if the image is here or can be pulled, else builds the local stand-in $3.
pick() {
    local var=$1 official=$2 kind=$3
    if [ -n "${!var:-}" ]; then
        return
    fi
    if [ "${CAIRN_LOCAL_DEPS:-0}" != 1 ] && { docker image inspect "$official" >/dev/null 2>&1 \
        || timeout 120 docker pull -q "$official" >/dev/null 2>&1; }; then
        export "$var=$official"
    else
        log "no $official here and no registry to pull it from: building cairn-$kind:local"
        bash "$here/build-local-deps.sh" "$kind" >/dev/null
        export "$var=cairn-$kind:local"
    fi
}
pick CAIRN_POSTGRES_IMAGE postgres:17 postgres
pick CAIRN_S3_IMAGE localstack/localstack:4 localstack

command -v python3 >/dev/null || die "python3 is needed (it picks a free port and reads JSON)"
profiles=()
if docker image inspect prom/prometheus:v3.5.0 >/dev/null 2>&1 \
    && docker image inspect grafana/grafana:12.1.0 >/dev/null 2>&1; then
    profiles=(--profile observe)
else
    log "Prometheus and Grafana images are not here: running without the profile \"observe\""
fi

export COMPOSE_PROJECT_NAME=cairn-smoke-$$
# The published agent port: a free one, so a cairn already on 7170 does not collide.
CAIRN_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CAIRN_PORT
dc() { "${compose[@]}" -f "$here/docker-compose.yml" "${profiles[@]}" "$@"; }
cli() { dc run --rm -T cli "$@"; }
cleanup() {
    local rc=$?
    if [ $rc -ne 0 ]; then
        dc logs --no-color --tail 30 >&2 || true
    fi
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    exit $rc
}
trap cleanup EXIT

started=$(date +%s)
log "starting the cluster ($COMPOSE_PROJECT_NAME: $CAIRN_POSTGRES_IMAGE, $CAIRN_S3_IMAGE, cairn:local)"
dc up -d >&2

# Waits up to $1 seconds for the command after it to succeed.
await() {
    local secs=$1
    shift
    local deadline=$(($(date +%s) + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 1
    done
}
three_agents() { [ "$(cli cluster --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["agents"]))')" = 3 ]; }
await 180 three_agents || die "the three agents never all registered"
log "three agents registered after $(($(date +%s) - started)) s"
cli cluster >&2

cli topic create orders --partitions 12 >&2
seq 1 1000 | sed 's/^/record-/' | cli produce orders >&2
count() { cli consume orders --from-beginning --max-records 100000 | grep -c '^record-' || true; }
got=$(count)
[ "$got" = 1000 ] || die "produced 1000 records, read back $got"
log "1000 records produced and read back"

compacted() { dc logs --no-color compactor | grep 'compactor cycle done' >/dev/null; }
await 120 compacted || die "the compactor completed no cycle in 120 s"
log "the compactor completed a cycle"

# One agent of zone-a dies: the CLI of zone-a still produces and reads through the other.
dc kill agent-a1 >&2
seq 1001 1500 | sed 's/^/record-/' | cli produce orders >&2
got=$(count)
[ "$got" = 1500 ] || die "after agent-a1 was killed: read back $got of 1500 records"
log "after agent-a1 was killed: 500 more produced, all 1500 read back"
log "passed in $(($(date +%s) - started)) s"
