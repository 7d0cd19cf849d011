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

# The bench builds the release binaries (berthd, the static berth-monitor) and proves that
# it still works; its figures are never judged here.
echo "== churn: 100 pod lifecycles while berthd and monitors are SIGKILLed; fails on any leak"
if ! BERTH_CHURN_NO_DEPS=1 hack/churn.sh --lifecycles 100 --workers 4 2>target/churn.log; then
  tail -n 80 target/churn.log
  exit 1
fi

echo "== huge node: 5,000 exited containers; start-up under 5 s, streamed lists complete, nothing left"
if ! BERTH_CHURN_NO_DEPS=1 hack/churn.sh --exited-containers 5000 2>target/huge.log; then
  tail -n 80 target/huge.log
  exit 1
fi

# Without ASan: its cold build of runtime-core's dependency tree takes too long for CI;
# panics, aborts, hangs and memory blow-ups are still caught (hack/fuzz.sh runs with ASan).
echo "== fuzz: every cargo-fuzz target for 5 s from its seed corpus"
BERTH_FUZZ_SANITIZER=none BERTH_FUZZ_SECONDS=5 hack/fuzz.sh

echo "== bench smoke"
hack/bench.sh --quick --smoke

echo "== monitor memory budget (static release monitor, under 2 MiB RSS with one container)"
BERTH_MONITOR_BIN="$PWD/target/release/berth-monitor" \
  cargo test --locked -p berth-monitor --test monitor rss_with_one_running_container -- --nocapture
