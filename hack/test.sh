#!/usr/bin/env bash
# Runs every test of berth: unit tests, root integration tests and the end-to-end suite
# (a real berthd against a real registry on 127.0.0.1). Run as root on Debian 12; it
# installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/test.sh: the tests need root (namespaces, mounts, cgroups, chown)" >&2
  exit 1
fi

hack/install-deps.sh

# CI shells may not have rustup's bin dir on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi

export CARGO_TERM_COLOR=never
# The e2e tests start the berthd built here, never one from PATH.
export BERTHD="$PWD/target/debug/berthd"

echo "== format"
cargo fmt --all -- --check

echo "== build"
cargo build --workspace --all-targets --locked

echo "== clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
cargo test --workspace --locked -- --test-threads="${BERTH_TEST_THREADS:-2}"

echo "== release build (static monitor) and the monitor memory budget"
cargo build --release --locked -p cri-server --bins
cargo rustc --release --locked -p cri-server --bin berth-monitor -- -C target-feature=+crt-static
BERTH_MONITOR_BIN="$PWD/target/release/berth-monitor" \
  cargo test --locked -p cri-server --test monitor rss_with_one_running_container -- --nocapture

if [ -x hack/bench.sh ]; then
  echo "== bench smoke"
  hack/bench.sh --quick --smoke
fi
