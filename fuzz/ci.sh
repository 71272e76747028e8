#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (60 by default)
# on a temporary copy of its in-repository corpus, so the repository stays
# clean. Exits non-zero if any target crashes (panic, failed assertion,
# timeout, out of memory) or fails to build; prints each target's
# executions. Needs a nightly toolchain; installs cargo-fuzz if missing.
#
#   fuzz/ci.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 fuzz/ci.sh ticket envelope
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"
seconds="${FUZZ_SECONDS:-60}"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
    echo "fuzz/ci.sh: the $toolchain toolchain is not installed (rustup toolchain install $toolchain)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo "+$toolchain" fuzz list)
fi

cargo "+$toolchain" fuzz build -O

work="$(mktemp -d "${TMPDIR:-/tmp}/roomkit-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=()
# One fuzzer per core (FUZZ_JOBS, 2 by default): each is single-threaded.
jobs="${FUZZ_JOBS:-2}"
run_one() {
    local t=$1
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    if [ -d "corpus/$t" ]; then
        cp -R "corpus/$t/." "$work/corpus/$t/"
    fi
    local status=0
    cargo "+$toolchain" fuzz run -O "$t" "$work/corpus/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1 || status=$?
    echo "$status" >"$work/$t.status"
}
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        sleep 1
    done
    run_one "$t" &
done
wait

printf "%-18s %12s %10s %8s %8s %s\n" target executions exec/s cov ft result
for t in "${targets[@]}"; do
    log="$work/$t.log"
    status="$(cat "$work/$t.status" 2>/dev/null || echo 1)"
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
    speed="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1 || true)"
    last="$(grep -E '^#[0-9]+' "$log" | tail -1 || true)"
    cov="$(grep -o 'cov: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)"
    ft="$(grep -o 'ft: [0-9]*' <<<"$last" | grep -o '[0-9]*' || true)"
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $status)"
        failed+=("$t")
        echo "---- $t: last 60 lines of the log" >&2
        tail -n 60 "$log" >&2
        for a in "$work/artifacts/$t"/*; do
            [ -e "$a" ] || continue
            echo "---- $t: artifact $(basename "$a") (base64)" >&2
            base64 <"$a" >&2
        done
    fi
    printf '%-18s %12s %10s %8s %8s %s\n' "$t" "${runs:-?}" "${speed:-?}" "${cov:-?}" "${ft:-?}" "$result"
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/ci.sh: crashes in: ${failed[*]}" >&2
    exit 1
fi
