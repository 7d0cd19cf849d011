#!/usr/bin/env bash
# Installs berth's default CNI network (bridge berth0 + host-local 10.88.0.0/16 + portmap
# + firewall, like CRI-O's default) into the CNI conf dir when that directory holds no
# network config yet. An existing config is never replaced. Usage:
#   hack/install-cni-config.sh [CONF_DIR]   (default /etc/cni/net.d)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
conf_dir="${1:-/etc/cni/net.d}"

mkdir -p "$conf_dir"
if compgen -G "$conf_dir/*.conflist" >/dev/null || compgen -G "$conf_dir/*.conf" >/dev/null \
  || compgen -G "$conf_dir/*.json" >/dev/null; then
  echo "install-cni-config: $conf_dir already has a network config; leaving it alone"
  exit 0
fi

src="$here/cni/10-berth.conflist"
# The firewall plugin needs iptables; without it every pod would fail.
if ! command -v iptables >/dev/null 2>&1 || { ! [ -x /usr/lib/cni/firewall ] && ! [ -x /opt/cni/bin/firewall ]; }; then
  src="$here/cni/10-berth-nofirewall.conflist"
fi
install -m 0644 "$src" "$conf_dir/10-berth.conflist"
echo "install-cni-config: installed $conf_dir/10-berth.conflist"
