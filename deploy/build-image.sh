#!/usr/bin/env bash
# Builds the `cairn` container image from a cairn binary and nothing else: no base image,
# no registry (our machines reach none). The image's root filesystem holds the binary, the
# shared libraries it links (as `ldd` lists them, at the same paths), the CA certificates
# (for https object stores) and an empty /tmp and /data, imported with `docker import`.
#
# The image is tagged cairn:<content hash> (of the binary and the libraries) and cairn:local;
# a second run with the same binary only re-tags, so CI and the tests build it once.
# Prints the content tag on its last line.
#
# Usage: deploy/build-image.sh [BINARY]   (default: target/release/cairn, built if missing)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-}
if [ -z "$bin" ]; then
    bin=${CARGO_TARGET_DIR:-$root/target}/release/cairn
    if [ ! -x "$bin" ]; then
        (cd "$root" && cargo build --release -p cairn >&2)
    fi
fi
[ -x "$bin" ] || { echo "no executable at $bin" >&2; exit 2; }
command -v docker >/dev/null || { echo "docker is not installed" >&2; exit 2; }

# The libraries the binary loads, with the dynamic loader (its path has no `=>`).
libs=$(ldd "$bin" | awk '/=>/ && $3 ~ /^\// {print $3} !/=>/ && $1 ~ /^\// {print $1}' | sort -u)
hash=$( (sha256sum "$bin"; for l in $libs; do sha256sum "$(readlink -f "$l")"; done) | sha256sum | cut -c1-16)
tag=cairn:$hash
if docker image inspect "$tag" >/dev/null 2>&1; then
    docker tag "$tag" cairn:local
    echo "$tag"
    exit 0
fi

rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/data" "$rootfs/etc/ssl/certs"
chmod 1777 "$rootfs/tmp"
cp "$bin" "$rootfs/usr/local/bin/cairn"
for l in $libs; do
    mkdir -p "$rootfs$(dirname "$l")"
    cp -L "$l" "$rootfs$l"
done
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
fi
# A user table with one unprivileged user, for tools that look it up.
printf 'root:x:0:0:root:/:/nonexistent\ncairn:x:1000:1000:cairn:/data:/nonexistent\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\ncairn:x:1000:\n' >"$rootfs/etc/group"

tar -C "$rootfs" -c . | docker import \
    -c 'ENTRYPOINT ["/usr/local/bin/cairn"]' \
    -c 'CMD ["agent", "--listen", "0.0.0.0:7170"]' \
    -c 'WORKDIR /data' \
    -c 'ENV CAIRN_LOG=info' \
    -c 'EXPOSE 7170 7171' \
    -m "cairn from $(basename "$bin") ($hash)" - "$tag" >/dev/null
docker tag "$tag" cairn:local
# Older builds' images (other content tags) are dropped, so repeated builds do not pile up.
for old in $(docker images cairn --format '{{.Tag}}'); do
    case $old in local | "$hash") ;; *) docker rmi "cairn:$old" >/dev/null 2>&1 || true ;; esac
done
echo "$tag"
