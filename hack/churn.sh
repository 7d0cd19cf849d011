#!/usr/bin/env bash
# Pod churn under faults: 1000 pod lifecycles on 4 workers (RunPodSandbox, CreateContainer,
# StartContainer, ExecSync, StopContainer, RemoveContainer, StopPodSandbox,
# RemovePodSandbox) while berthd is SIGKILLed at random moments and restarted, and now
# and then a pod monitor is SIGKILLed too; then every pod is removed as kubelet would and
# the host is searched for anything berth left (mounts, netns pins, veths, IPAM
# reservations, cgroups, processes, bundles, pod and container directories, records).
# Fails on any leak or pod that cannot be removed. Arguments go to berth-churn:
#
#   hack/churn.sh                               1000 lifecycles, 4 workers
#   hack/churn.sh --lifecycles 100              the short form hack/test.sh runs
#   hack/churn.sh --kill-every-ms 0             no faults (a baseline)
#   hack/churn.sh --exited-containers 20000     a huge node instead: start-up, memory per
#                                               record, list sizes (docs/reliability.md)
#
# Runs everything on 127.0.0.1 with its own registry, berthd, dirs, CNI network and cgroup
# parent; needs root on Debian 12, installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "hack/churn.sh: needs root (pods, mounts, cgroups, network namespaces)" >&2
  exit 1
fi
if [ -z "${BERTH_CHURN_NO_DEPS:-}" ]; then
  hack/install-deps.sh >&2
fi
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  . "$HOME/.cargo/env"
fi
export CARGO_TERM_COLOR=never
cargo build --locked -p cri-server -p berth-monitor -p berth-churn --bins >&2
export BERTHD="$PWD/target/debug/berthd"
if [ $# -eq 0 ]; then
  set -- --lifecycles 1000 --workers 4
fi
exec target/debug/berth-churn "$@"
