#!/usr/bin/env bash
# Builds stand-ins for the compose file's PostgreSQL and LocalStack images from what this
# machine already has, for machines that reach no image registry (ours): no base image, no
# pull. Like build-image.sh, each image is a root filesystem imported with `docker import`:
#
#   cairn-postgres:local    this host's PostgreSQL (Debian's postgresql package: binaries,
#                           extensions, the shared libraries they link), with an entry
#                           point that honours the official image's POSTGRES_USER,
#                           POSTGRES_PASSWORD and POSTGRES_DB and keeps its data in
#                           /var/lib/postgresql/data;
#   cairn-localstack:local  LocalStack's S3 as localstack/host.sh installs it (its venv
#                           and the Python 3.13 it was made with), with an entry point that
#                           runs the init scripts in /etc/localstack/init/ready.d once S3
#                           answers, as the official image does.
#
# Each is also tagged with a hash of its content, so a second run only re-tags. Then:
#
#   CAIRN_POSTGRES_IMAGE=cairn-postgres:local CAIRN_S3_IMAGE=cairn-localstack:local \
#       docker-compose -f deploy/docker-compose.yml up -d
#
# Usage: deploy/build-local-deps.sh [postgres|localstack]...   (default: both)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 2; }

# Copies the shared libraries each file given loads (as ldd resolves them on this host)
# into $rootfs at their paths, unless there already.
copy_libs() {
    local f l
    for f in "$@"; do
        for l in $(ldd "$f" 2>/dev/null | awk '/=>/ && $3 ~ /^\// {print $3} !/=>/ && $1 ~ /^\// {print $1}'); do
            [ -e "$rootfs$l" ] && continue
            mkdir -p "$rootfs$(dirname "$l")"
            cp -L "$l" "$rootfs$l"
        done
    done
}

# Copies each file given (keeping its path) and every shared library it loads into $rootfs.
copy_with_libs() {
    local f
    for f in "$@"; do
        mkdir -p "$rootfs$(dirname "$f")"
        cp -a "$f" "$rootfs$f"
        if [ -f "$f" ] && [ ! -L "$f" ]; then
            copy_libs "$f"
        fi
    done
}

# Imports $rootfs as $1:<content hash> and $1:local (reusing an image of the same content).
import() {
    local name=$1 hash
    shift
    hash=$(cd "$rootfs" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
    if ! docker image inspect "$name:$hash" >/dev/null 2>&1; then
        tar --numeric-owner -C "$rootfs" -c . | docker import "$@" -m "$name from this host ($hash)" - "$name:$hash" >/dev/null
    fi
    docker tag "$name:$hash" "$name:local"
    for old in $(docker images "$name" --format '{{.Tag}}'); do
        case $old in local | "$hash") ;; *) docker rmi "$name:$old" >/dev/null 2>&1 || true ;; esac
    done
    echo "$name:$hash"
}

base_rootfs() {
    rootfs=$(mktemp -d)
    mkdir -p "$rootfs/tmp" "$rootfs/etc" "$rootfs/bin"
    chmod 1777 "$rootfs/tmp"
    # /bin/sh itself (a link to dash on Debian), for the entry points and init scripts.
    copy_with_libs "$(readlink -f /bin/sh)"
    cp -L /bin/sh "$rootfs/bin/sh"
    # Time zones (PostgreSQL's and Python's zoneinfo read the system's).
    if [ -d /usr/share/zoneinfo ]; then
        mkdir -p "$rootfs/usr/share"
        cp -a /usr/share/zoneinfo "$rootfs/usr/share/"
    fi
}

build_postgres() {
    local pg
    pg=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$pg" ] || { echo "no PostgreSQL under /usr/lib/postgresql (apt-get install postgresql)" >&2; exit 2; }
    pg=$(dirname "$pg")
    local version share
    version=$(basename "$pg")
    share=/usr/share/postgresql/$version
    base_rootfs
    copy_with_libs "$pg"/bin/* $(find "$pg/lib" -name '*.so' -type f ! -name 'llvmjit*')
    mkdir -p "$rootfs/usr/share/postgresql"
    cp -a "$share" "$rootfs/usr/share/postgresql/"
    printf 'root:x:0:0:root:/:/nonexistent\npostgres:x:999:999:postgres:/var/lib/postgresql:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\npostgres:x:999:\n' >"$rootfs/etc/group"
    mkdir -p "$rootfs/var/lib/postgresql/data" "$rootfs/var/run/postgresql" "$rootfs/usr/local/bin"
    chown -R 999:999 "$rootfs/var/lib/postgresql" "$rootfs/var/run/postgresql"
    chmod 700 "$rootfs/var/lib/postgresql/data"
    cat >"$rootfs/usr/local/bin/postgres-entrypoint" <<'EOF'
#!/bin/sh
# The official postgres image's contract, as far as the compose file uses it: the variables
# POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB; data in $PGDATA; listening on every address.
set -e
user=${POSTGRES_USER:-postgres}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    echo "$POSTGRES_PASSWORD" >/tmp/pwfile
    initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile --encoding=UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256
    : >/tmp/pwfile
    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
    db=${POSTGRES_DB:-$user}
    if [ "$db" != postgres ]; then
        echo "CREATE DATABASE \"$db\"" | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
EOF
    chmod 755 "$rootfs/usr/local/bin/postgres-entrypoint"
    import cairn-postgres \
        -c 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]' \
        -c "ENV PATH=$pg/bin:/usr/local/bin:/usr/bin:/bin" \
        -c 'ENV PGDATA=/var/lib/postgresql/data' \
        -c 'USER postgres' \
        -c 'EXPOSE 5432'
    rm -rf "$rootfs"
}

build_localstack() {
    bash "$root/localstack/host.sh" install
    local home=${CAIRN_LOCALSTACK_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/cairn/localstack}
    local venv=$home/venv python
    python=$(readlink -f "$venv/bin/python")
    local prefix
    prefix=$(dirname "$(dirname "$python")")
    base_rootfs
    # The Python LocalStack's venv was made with, at its own path (the venv points to it),
    # without its test suite; and the venv at /opt/localstack/venv.
    mkdir -p "$rootfs$prefix" "$rootfs/opt/localstack" "$rootfs/usr/local/bin"
    tar -C "$prefix" --exclude='./lib/python3.*/test' --exclude='./lib/python3.*/idlelib' \
        --exclude='./lib/python3.*/tkinter' --exclude='__pycache__' -c . | tar -C "$rootfs$prefix" -x
    tar -C "$venv" --exclude='__pycache__' -c . | tar -C "$rootfs/opt/localstack" -x --transform 's,^\.,./venv,'
    # The shared libraries the interpreter and every extension module load (ldd resolves
    # them on this host; those inside the Python prefix are copied already).
    copy_libs $(find "$rootfs$prefix" "$rootfs/opt/localstack" -type f \( -name '*.so*' -o -path '*/bin/python3.*' \))
    # Python finds its venv next to the path it was started by, not through a link to it.
    printf '#!/bin/sh\nexec /opt/localstack/venv/bin/python "$@"\n' >"$rootfs/usr/local/bin/python3"
    chmod 755 "$rootfs/usr/local/bin/python3"
    [ -f /etc/ssl/certs/ca-certificates.crt ] && { mkdir -p "$rootfs/etc/ssl/certs"; cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"; }
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\n' >"$rootfs/etc/group"
    printf '127.0.0.1 localhost\n' >"$rootfs/etc/hosts"
    mkdir -p "$rootfs/var/lib/localstack" "$rootfs/etc/localstack/init/ready.d"
    cat >"$rootfs/usr/local/bin/localstack-entrypoint" <<'EOF'
#!/opt/localstack/venv/bin/python
"""LocalStack's S3 in the foreground, and the init scripts in /etc/localstack/init/ready.d
(.py with this Python, .sh with /bin/sh) once it answers, as the official image runs them."""
import os, pathlib, signal, subprocess, sys, time, urllib.request

state = pathlib.Path("/var/lib/localstack")
for d in ("fs", "cache", "tmp"):
    (state / d).mkdir(parents=True, exist_ok=True)
env = dict(os.environ, GATEWAY_SERVER="hypercorn", OVERRIDE_IN_DOCKER="0", DNS_ADDRESS="0",
           GATEWAY_LISTEN=os.environ.get("GATEWAY_LISTEN", "0.0.0.0:4566"),
           SERVICES=os.environ.get("SERVICES", "s3"), EAGER_SERVICE_LOADING="1",
           FILESYSTEM_ROOT=str(state / "fs"), XDG_CACHE_HOME=str(state / "cache"),
           TMPDIR=str(state / "tmp"), DISABLE_EVENTS="1", LOCALSTACK_TELEMETRY_DISABLED="1",
           SKIP_SSL_CERT_DOWNLOAD="1")
proc = subprocess.Popen([sys.executable, "-m", "localstack.runtime.main"], env=env)
signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
port = env["GATEWAY_LISTEN"].rsplit(":", 1)[1]
while proc.poll() is None:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/_localstack/health", timeout=2)
        break
    except OSError:
        time.sleep(0.2)
for script in sorted(pathlib.Path("/etc/localstack/init/ready.d").glob("*")):
    runner = {".py": [sys.executable], ".sh": ["/bin/sh"]}.get(script.suffix)
    if runner:
        print(f"running init script {script}", flush=True)
        subprocess.run(runner + [str(script)], check=False)
print("Ready.", flush=True)
sys.exit(proc.wait())
EOF
    chmod 755 "$rootfs/usr/local/bin/localstack-entrypoint"
    import cairn-localstack \
        -c 'ENTRYPOINT ["/usr/local/bin/localstack-entrypoint"]' \
        -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
        -c 'EXPOSE 4566'
    rm -rf "$rootfs"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(postgres localstack)
for t in "${targets[@]}"; do
    case $t in
        postgres) build_postgres ;;
        localstack) build_localstack ;;
        *) echo "unknown image $t (postgres or localstack)" >&2; exit 2 ;;
    esac
done
