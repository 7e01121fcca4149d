#!/usr/bin/env bash
# Fuzzes Cairn's decoders (the cargo-fuzz targets in fuzz/, see fuzz/README.md) for a bounded
# time: builds every target once, then runs each for SECONDS (default 30) starting from a
# copy of its committed corpus (the checkout is not modified). Exits non-zero if any target
# crashes (a panic, an abort, a timeout, out of memory), after printing each crashing input
# in hex. Usage: .ci/fuzz.sh [SECONDS]
#
# Environment: CARGO_TARGET_DIR (default $HOME/.cache/cairn/fuzz-target), CAIRN_FUZZ_TARGETS
# (space-separated subset; default all), CAIRN_FUZZ_ARTIFACTS (where crashing inputs are kept;
# default a temp dir, printed), CAIRN_FUZZ_SANITIZER (cargo fuzz --sanitizer; default
# address), CAIRN_FUZZ_TIMEOUTS_KNOWN (targets whose timeouts are reported, not failures;
# default "parquet", see below; empty makes every timeout a failure), CAIRN_FUZZ_TIMEOUT
# (seconds after which one input is a hang; default 60).
set -euo pipefail

secs=${1:-30}
case $secs in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS]" >&2
    exit 2
    ;;
esac

cd "$(dirname "$0")/../fuzz"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/cairn/fuzz-target}
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
mkdir -p "$CARGO_TARGET_DIR"
sanitizer=${CAIRN_FUZZ_SANITIZER:-address}
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

step "toolchain"
if ! command -v cargo >/dev/null; then
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
rustup run nightly rustc --version
if ! cargo fuzz --version >/dev/null 2>&1; then
    # Installed with the default (stable) toolchain; it drives `cargo +nightly` below.
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version

targets=${CAIRN_FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
echo "targets: $(echo "$targets" | tr '\n' ' ')"

step "build (${CARGO_TARGET_DIR}, sanitizer ${sanitizer})"
start=$(date +%s)
cargo +nightly fuzz build --sanitizer "$sanitizer"
echo "built in $(($(date +%s) - start)) s"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=${CAIRN_FUZZ_ARTIFACTS:-$work/artifacts}
# Targets whose timeouts (an input running past -timeout) are reported but do not fail the
# run: the parquet crate's footer decoder skips a list of booleans of an unknown field one
# element at a time without consuming a byte, so a small corrupt footer can keep it busy for
# minutes. That loop is inside the parquet crate (fuzz/README.md, "Slow inputs"); the agent
# runs the decoder on a blocking thread so it never holds a runtime worker. Any other crash of
# these targets still fails the run.
timeouts_known=${CAIRN_FUZZ_TIMEOUTS_KNOWN-parquet}
failed=()
for target in $targets; do
    step "fuzz $target for ${secs} s"
    mkdir -p "$work/corpus/$target" "$artifacts/$target"
    if [ -d "corpus/$target" ]; then
        cp -R "corpus/$target/." "$work/corpus/$target/"
    fi
    echo "seed corpus: $(find "$work/corpus/$target" -type f | wc -l) files"
    # -timeout: an input that takes this long is a hang; -rss_limit_mb: libFuzzer's default.
    run_failed=0
    if ! cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" "$work/corpus/$target" -- \
        -max_total_time="$secs" -timeout="${CAIRN_FUZZ_TIMEOUT:-60}" -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/$target/" 2>&1 | tail -n 120; then
        run_failed=1
    fi
    crashed=0
    tolerated=0
    for f in "$artifacts/$target"/*; do
        [ -f "$f" ] || continue
        name=$(basename "$f")
        case $name in
        slow-unit-*)
            # Slower than libFuzzer's -report_slow_units (10 s), not a hang (-timeout): a
            # finding to look at, not a failure. See fuzz/README.md, "Slow inputs".
            echo "slow input $f ($(wc -c <"$f") bytes; first 4 KiB in hex):"
            head -c 4096 "$f" | od -An -v -tx1 | tr -d ' \n'
            echo
            continue
            ;;
        timeout-*)
            case " $timeouts_known " in
            *" $target "*)
                echo "timeout of the known kind in $target (not a failure; fuzz/README.md, \"Slow inputs\"): $f ($(wc -c <"$f") bytes; first 4 KiB in hex):"
                head -c 4096 "$f" | od -An -v -tx1 | tr -d ' \n'
                echo
                tolerated=1
                continue
                ;;
            esac
            ;;
        esac
        echo "crashing input $f ($(wc -c <"$f") bytes; first 4 KiB in hex):"
        head -c 4096 "$f" | od -An -v -tx1 | tr -d ' \n'
        echo
        crashed=1
    done
    # A failed run with no artifact but a tolerated timeout is that timeout; without any
    # artifact it is a failure of its own (a build or harness error).
    if [ "$crashed" = 1 ] || { [ "$run_failed" = 1 ] && [ "$tolerated" = 0 ]; }; then
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo
    # Repeated last, so a log cut to its tail still names each failing input.
    for target in "${failed[@]}"; do
        for f in "$artifacts/$target"/*; do
            [ -f "$f" ] || continue
            case $(basename "$f") in slow-unit-*) continue ;; esac
            echo "$target: $(basename "$f") ($(wc -c <"$f") bytes): $(head -c 256 "$f" | od -An -v -tx1 | tr -d ' \n')"
        done
    done
    echo "FAILED: ${failed[*]} crashed (inputs under $artifacts; add each to fuzz/corpus/<target>/ and a regression test)"
    if [ -z "${CAIRN_FUZZ_ARTIFACTS:-}" ]; then
        kept=$(mktemp -d /tmp/cairn-fuzz-artifacts.XXXXXX)
        cp -R "$artifacts/." "$kept/"
        echo "copied to $kept"
    fi
    exit 1
fi
echo
echo "fuzzing: $(echo "$targets" | wc -w) targets ran ${secs} s each, no crash"
