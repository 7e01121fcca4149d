#!/usr/bin/env bash
# Runs LocalStack's S3 on this host without Docker, for tests and development.
#
#   host.sh install                  create the cached venv (idempotent)
#   host.sh start [PORT]             start in the background (default 4566), create the bucket
#   host.sh stop [PORT]              stop what `start` started
#   host.sh status [PORT]            print whether it is up
#   host.sh run --watch-pid PID [PORT]
#                                    start, print LOCALSTACK_ENDPOINT=..., and stop LocalStack
#                                    when PID exits or this script is signalled (PORT 0 = any
#                                    free port); used by the test harness
#
# Only the endpoint line goes to stdout; everything else goes to stderr. LocalStack binds
# one address, 127.0.0.1 unless CAIRN_LOCALSTACK_HOST says another. Environment:
# CAIRN_LOCALSTACK_HOME (cache, default ~/.cache/cairn/localstack), CAIRN_PYTHON (a Python
# 3.13), CAIRN_S3_BUCKET (default cairn), CAIRN_LOCALSTACK_PORT (default port),
# CAIRN_LOCALSTACK_HOST (default 127.0.0.1).
set -euo pipefail

PINS=("localstack-core[base-runtime]==2026.3.0" "cbor2<6" "pyopenssl<25" "cryptography<45" "service-identity")
HOME_DIR=${CAIRN_LOCALSTACK_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/localstack}
VENV=$HOME_DIR/venv
BUCKET=${CAIRN_S3_BUCKET:-cairn}
# The address LocalStack listens on (another one of this host, e.g. a Docker network's
# gateway, lets containers reach it).
HOST=${CAIRN_LOCALSTACK_HOST:-127.0.0.1}

log() { echo "localstack/host.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

find_python() {
    local candidates=()
    [ -n "${CAIRN_PYTHON:-}" ] && candidates+=("$CAIRN_PYTHON")
    candidates+=("$HOME"/.pyenv/versions/3.13*/bin/python3.13)
    command -v python3.13 >/dev/null 2>&1 && candidates+=("$(command -v python3.13)")
    candidates+=("$HOME_DIR"/uv-python/*/bin/python3.13)
    for py in "${candidates[@]}"; do
        if [ -x "$py" ] && "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    # Last resort: a standalone CPython 3.13 through uv (from PyPI).
    if command -v python3 >/dev/null 2>&1; then
        log "no Python 3.13 found; fetching one with uv (LocalStack needs 3.13: 3.11 and 3.12 fail)"
        local uvenv=$HOME_DIR/uv
        python3 -m venv "$uvenv" >&2 && "$uvenv/bin/pip" install -q uv >&2 \
            && UV_PYTHON_INSTALL_DIR=$HOME_DIR/uv-python "$uvenv/bin/uv" python install 3.13 >&2 || true
        for py in "$HOME_DIR"/uv-python/*/bin/python3.13; do
            [ -x "$py" ] && { echo "$py"; return 0; }
        done
    fi
    return 1
}

install() {
    mkdir -p "$HOME_DIR"
    local stamp=$VENV/.cairn-pins want
    want=$(printf '%s\n' "${PINS[@]}")
    # The lock is held only while installing: closed before LocalStack is launched, so a
    # LocalStack started by `start` does not inherit it and block every later `run`.
    exec 9>"$HOME_DIR/install.lock"
    # Another install (pip, a Python download) holds it for minutes at most.
    flock -w 900 9 || die "waited 15 min for $HOME_DIR/install.lock: another host.sh is installing (or hung: see its pid with \`fuser $HOME_DIR/install.lock\`)"
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        exec 9>&-
        return 0
    fi
    local py
    py=$(find_python) || die "LocalStack needs Python 3.13 (3.11 and 3.12 fail inside localstack-core); install it (e.g. pyenv install 3.13) or set CAIRN_PYTHON"
    log "installing LocalStack into $VENV with $py (takes a minute, once)"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" >&2
    "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}" >&2
    echo "$want" >"$stamp"
    exec 9>&-
    log "installed"
}

free_port() {
    "$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("'"$HOST"'", 0)); print(s.getsockname()[1]); s.close()'
}

state_dir() { echo "$HOME_DIR/state/$1"; }

healthy() {
    curl -sf "http://$HOST:$1/_localstack/health" 2>/dev/null | grep -Eq '"s3": *"(available|running)"'
}

# Starts LocalStack on $1 in its own process group; prints its pid.
launch() {
    local port=$1 dir
    dir=$(state_dir "$port")
    rm -rf "$dir"
    mkdir -p "$dir/fs" "$dir/cache" "$dir/tmp"
    # GATEWAY_SERVER=hypercorn keeps it on $HOST; OVERRIDE_IN_DOCKER=0 keeps it out of
    # /etc, /var/lib and /usr/lib.
    env GATEWAY_SERVER=hypercorn OVERRIDE_IN_DOCKER=0 DNS_ADDRESS=0 \
        GATEWAY_LISTEN="$HOST:$port" SERVICES=s3 EAGER_SERVICE_LOADING=1 \
        FILESYSTEM_ROOT="$dir/fs" XDG_CACHE_HOME="$dir/cache" TMPDIR="$dir/tmp" \
        DISABLE_EVENTS=1 LOCALSTACK_TELEMETRY_DISABLED=1 SKIP_SSL_CERT_DOWNLOAD=1 \
        setsid "$VENV/bin/python" -m localstack.runtime.main >"$dir/localstack.log" 2>&1 </dev/null &
    echo $! >"$dir/pid"
    echo $!
}

wait_ready() {
    local port=$1 pid=$2 dir
    dir=$(state_dir "$port")
    for _ in $(seq 1 600); do
        if healthy "$port"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 40 "$dir/localstack.log" >&2 || true
            die "LocalStack exited during start-up (log: $dir/localstack.log)"
        fi
        sleep 0.1
    done
    tail -n 40 "$dir/localstack.log" >&2 || true
    kill -TERM -- "-$pid" 2>/dev/null || true
    die "LocalStack was not ready after 60 s (log: $dir/localstack.log)"
}

make_bucket() {
    local port=$1 code
    code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "http://$HOST:$port/$BUCKET")
    case $code in
        200 | 409) ;;
        *) die "creating bucket $BUCKET answered HTTP $code" ;;
    esac
}

stop_pid() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

cmd=${1:-}
shift || true
case $cmd in
    install)
        install
        ;;
    start)
        port=${1:-${CAIRN_LOCALSTACK_PORT:-4566}}
        install
        if healthy "$port"; then
            log "already running on $HOST:$port"
        else
            pid=$(launch "$port")
            wait_ready "$port" "$pid"
        fi
        make_bucket "$port"
        log "S3 ready on $HOST:$port with bucket $BUCKET (stop: $0 stop $port)"
        echo "LOCALSTACK_ENDPOINT=http://$HOST:$port"
        ;;
    stop)
        port=${1:-${CAIRN_LOCALSTACK_PORT:-4566}}
        pidfile=$(state_dir "$port")/pid
        if [ -f "$pidfile" ]; then
            stop_pid "$(cat "$pidfile")"
            rm -f "$pidfile"
            log "stopped LocalStack on port $port"
        else
            log "nothing started on port $port"
        fi
        ;;
    status)
        port=${1:-${CAIRN_LOCALSTACK_PORT:-4566}}
        if healthy "$port"; then
            echo "running on $HOST:$port"
        else
            echo "not running on $HOST:$port"
            exit 1
        fi
        ;;
    run)
        [ "${1:-}" = "--watch-pid" ] && [ -n "${2:-}" ] || die "usage: $0 run --watch-pid PID [PORT]"
        watch=$2
        port=${3:-0}
        install
        [ "$port" = 0 ] && port=$(free_port)
        pid=$(launch "$port")
        cleanup() {
            stop_pid "$pid"
            rm -rf "$(state_dir "$port")"
        }
        trap 'cleanup; exit 0' TERM INT HUP
        trap cleanup EXIT
        wait_ready "$port" "$pid"
        make_bucket "$port"
        echo "LOCALSTACK_ENDPOINT=http://$HOST:$port"
        # Our stdout may be a pipe the watcher stops reading; never write to it again.
        exec >/dev/null
        while kill -0 "$watch" 2>/dev/null && kill -0 "$pid" 2>/dev/null; do
            sleep 1
        done
        ;;
    *)
        sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
        exit 2
        ;;
esac
