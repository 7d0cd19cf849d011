#!/usr/bin/env bash
# Measures berth against containerd on this machine: builds the release binaries (berthd,
# the static berth-monitor as hack/run.sh builds them, and berth-bench), then runs
# berth-bench, which starts a local registry, a containerd (Debian's package) and a berthd
# of its own on 127.0.0.1 only, runs the same workloads on both and prints medians, p95
# and ratios berth / containerd. Arguments go to berth-bench:
#
#   hack/bench.sh                      full run (under 20 minutes)
#   hack/bench.sh --quick              smaller run (under 3 minutes)
#   hack/bench.sh --quick --smoke      proves the tool works (CI; figures mean nothing)
#   hack/bench.sh --write-docs docs/benchmarks.md   full run, results into the docs
#   hack/bench.sh --keep-logs DIR      keep the runtimes' logs
#   hack/bench.sh --scale 500          also 500 pods per runtime, reported per decade
#
# Run as root on Debian 12; installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/bench.sh: the bench needs root (it runs container runtimes)" >&2
  exit 1
fi

hack/install-deps.sh >&2

# CI shells may not have rustup's bin dir on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi

export CARGO_TERM_COLOR=never
echo "hack/bench.sh: building release binaries" >&2
cargo build --release --locked -p berth-bench >&2
cargo build --release --locked -p cri-server --bins >&2
# The monitor is linked statically, as hack/run.sh runs it (one per pod: it maps no shared
# glibc pages). This must come after the plain build, which would relink it dynamically.
cargo rustc --release --locked -p berth-monitor --bin berth-monitor -- -C target-feature=+crt-static >&2

exec target/release/berth-bench --berthd "$PWD/target/release/berthd" "$@"
