#!/usr/bin/env bash
# Fuzzes the token verifier and the request-body parsers with cargo fuzz
# (libFuzzer + AddressSanitizer) for a fixed time each:
#   bash hack/fuzz.sh [SECONDS per target, default 60]
# cargo fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP lets the stable
# toolchain accept them, so no extra toolchain is needed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in token body; do
  echo "== fuzzing $target for ${secs}s"
  cargo fuzz run "$target" -- -max_total_time="$secs" -rss_limit_mb=2048 2>&1 | grep -E "^(#[0-9]+.*DONE|Done|==.*ERROR|SUMMARY|thread .* panicked)" || true
  # A crash leaves an artifact and a non-zero status: fail loudly.
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "fuzz target $target crashed: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "no crashes"
