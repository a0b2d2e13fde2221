#!/usr/bin/env bash
# Runs every libFuzzer target of portcullis-core for SECONDS each (default 20: the CI smoke
# run; 600 for the documented 10-minute run), from the committed seed corpus, with
# AddressSanitizer. New inputs go to target/fuzz-corpus/<target> (the committed seeds stay
# as they are); a crash stops the run and leaves its input under fuzz/artifacts/<target>.
#
#   gateway/core/fuzz/run.sh            # 20 s per target
#   gateway/core/fuzz/run.sh 600        # 10 minutes per target
#
# The pinned toolchain is stable: cargo-fuzz's sanitizer flags are nightly-only, so
# RUSTC_BOOTSTRAP=1 is set for these builds only (nothing else in the project uses it).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
export RUSTC_BOOTSTRAP=1
targets=(jws jwks config session_cookie path_route headers)
cargo fuzz build -O --fuzz-dir fuzz
for t in "${targets[@]}"; do
    work="fuzz/target/fuzz-corpus/$t"
    mkdir -p "$work"
    echo "--- fuzz $t for ${seconds}s"
    log="fuzz/target/fuzz-$t.log"
    status=0
    cargo fuzz run -O --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -max_len=16384 -print_final_stats=1 >"$log" 2>&1 || status=$?
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|ERROR|SUMMARY|panicked|Test unit written' "$log" || true
    if [ "$status" -ne 0 ]; then
        echo "fuzz target $t failed (log: gateway/core/$log)"
        exit 1
    fi
done
