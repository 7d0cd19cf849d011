#!/usr/bin/env bash
# Runs berth's cargo-fuzz targets (fuzz/) for a bounded time each, from a copy of the
# committed seed corpus (fuzz/corpus/<target>/), so runs never grow the corpus. Fails if any
# target crashes, leaks past the RSS limit or hangs past the per-input timeout; the failing
# input is left in fuzz/artifacts/<target>/.
#
#   hack/fuzz.sh                    every target, BERTH_FUZZ_SECONDS (default 10) each
#   hack/fuzz.sh TARGET [SECONDS]   one target
#
# cargo-fuzz needs nightly-only flags (sanitizers, -Z options); they are enabled on the
# stable toolchain with RUSTC_BOOTSTRAP=1, so no nightly is needed (BERTH_FUZZ_TOOLCHAIN
# picks another rustup toolchain). BERTH_FUZZ_SANITIZER=none builds without ASan (faster).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi

export RUSTC_BOOTSTRAP=1
# The machine's one toolchain unless told otherwise (CI has only that one).
if [ -n "${BERTH_FUZZ_TOOLCHAIN:-}" ]; then
  export RUSTUP_TOOLCHAIN="$BERTH_FUZZ_TOOLCHAIN"
fi
export CARGO_TERM_COLOR=never
seconds="${BERTH_FUZZ_SECONDS:-10}"
sanitizer="${BERTH_FUZZ_SANITIZER:-address}"
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"

targets=(image_reference registries_conf berth_toml image_manifest tar_unpack cni_result
  log_writer monitor_protocol frame_parse header_block)
if [ $# -ge 1 ]; then
  if [ ! -d "fuzz/corpus/$1" ]; then
    echo "hack/fuzz.sh: no fuzz target $1 (targets: ${targets[*]})" >&2
    exit 2
  fi
  targets=("$1")
  seconds="${2:-$seconds}"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== install cargo-fuzz"
  cargo install --locked cargo-fuzz
fi

echo "== build fuzz targets (sanitizer $sanitizer)"
build=(cargo fuzz build --fuzz-dir fuzz --target-dir "$target_dir" --debug-assertions
  --sanitizer "$sanitizer")
if [ $# -ge 1 ]; then
  build+=("${targets[0]}")
fi
"${build[@]}"
host="$(rustc -vV | sed -n 's/^host: //p')"
bin_dir="$target_dir/$host/release"

work="$(mktemp -d "${TMPDIR:-/tmp}/berth-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  cp -r "fuzz/corpus/$t/." "$work/$t/"
  # Layers are bigger than libFuzzer's default 4 KiB inputs.
  max_len=4096
  [ "$t" = tar_unpack ] && max_len=16384
  log="$work/$t.log"
  status=0
  BERTH_FUZZ_TMP="$work" "$bin_dir/$t" "$work/$t" \
    -max_total_time="$seconds" -rss_limit_mb=512 -timeout=5 -max_len="$max_len" \
    -print_final_stats=1 -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1 || status=$?
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  if [ "$status" -ne 0 ]; then
    echo "FAIL $t (exit $status)"
    grep -v '^#[0-9]' "$log" | tail -n 60
    failed+=("$t")
  else
    echo "ok   $t: ${execs:-?} executions in ${seconds}s"
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "hack/fuzz.sh: ${failed[*]} failed; inputs in fuzz/artifacts/" >&2
  exit 1
fi
