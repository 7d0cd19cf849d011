#!/usr/bin/env bash
# Installs berth's dependencies if missing, installs the default CNI network when
# /etc/cni/net.d has none, builds the release binaries and runs berthd in
# the foreground with the default configuration (/etc/berth/berth.toml if present,
# built-in defaults otherwise), serving CRI on /run/berth/berth.sock. Extra arguments go
# to berthd, e.g. `hack/run.sh --log-level debug`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/run.sh: berthd must run as root" >&2
  exit 1
fi

hack/install-deps.sh

# CI shells may not have rustup's bin dir on PATH.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi
hack/install-cni-config.sh /etc/cni/net.d
cargo build --release --locked -p cri-server --bins
# The monitor is linked statically: one runs per pod, and a static binary maps no shared
# glibc pages (about 1.5 MiB RSS instead of 2.3 MiB).
cargo rustc --release --locked -p berth-monitor --bin berth-monitor -- -C target-feature=+crt-static
exec target/release/berthd "$@"
