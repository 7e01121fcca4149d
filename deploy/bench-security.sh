#!/usr/bin/env bash
# Produce and fetch throughput at 1 KiB records: a plain agent against one with TLS, bearer
# tokens and ACLs, in one run, fresh agents and data each round (a round writes ~10 GB,
# removed after). Figures: docs/BENCHMARKS.md, "Security on vs off".
# Usage: cargo build --release -p cairn; ROUNDS=4 DUR=10s bash deploy/bench-security.sh
# (B=path/to/cairn when the target dir is elsewhere).
set -euo pipefail
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release/cairn}
W=$(mktemp -d "${TMPDIR:-/tmp}/cairn-bench-security.XXXX")
cd "$W"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj /CN=cairn-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=agent -keyout agent.key -out agent.csr 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > agent.ext
openssl x509 -req -in agent.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 90 -extfile agent.ext -out agent.crt 2>/dev/null
P1=; P2=
# `|| true`: under `set -e` a failing kill (the agents are already gone after the last
# round) would end the trap before the rm, leaving ~10 GB per run in $TMPDIR.
trap 'kill $P1 $P2 2>/dev/null || true; rm -rf "$W"' EXIT
for round in $(seq 1 ${ROUNDS:-4}); do
  rm -rf plain secure
  CAIRN_LOG=warn $B agent --listen 127.0.0.1:7501 --metrics-listen 127.0.0.1:7502 --object-store plain/objects --metadata sqlite:plain/meta.sqlite > plain.out 2>plain.err &
  P1=$!
  CAIRN_LOG=warn $B agent --listen 127.0.0.1:7511 --metrics-listen 127.0.0.1:7512 --object-store secure/objects --metadata sqlite:secure/meta.sqlite \
    --tls-cert agent.crt --tls-key agent.key --tls-peer-ca ca.crt --require-auth --super-user admin > secure.out 2>secure.err &
  P2=$!
  sleep 2
  ADMIN=$($B token create --principal admin --metadata sqlite:secure/meta.sqlite)
  export CAIRN_CA=$W/ca.crt
  BENCH=$(CAIRN_TOKEN=$ADMIN $B token create --principal bench --endpoint 127.0.0.1:7511)
  for op in write read create delete describe; do
    CAIRN_TOKEN=$ADMIN $B acl add --principal bench --operation $op --topic bench- --prefix --endpoint 127.0.0.1:7511 2>/dev/null
  done
  CAIRN_TOKEN=$ADMIN $B acl add --principal bench --operation describe --cluster --endpoint 127.0.0.1:7511 2>/dev/null
  for i in $(seq 1 50); do
    CAIRN_TOKEN=$ADMIN $B acl add --principal user$i --operation read --topic team$i. --prefix --endpoint 127.0.0.1:7511 2>/dev/null
  done
  sleep 2
  for kind in produce consume; do
    echo "round $round $kind plain: $(env -u CAIRN_CA $B bench $kind --endpoint 127.0.0.1:7501 --duration ${DUR:-10s} --record-size 1KiB --json)"
    echo "round $round $kind secure: $(CAIRN_TOKEN=$BENCH $B bench $kind --endpoint 127.0.0.1:7511 --duration ${DUR:-10s} --record-size 1KiB --json)"
  done
  kill $P1 $P2; wait $P1 $P2 2>/dev/null || true
done
