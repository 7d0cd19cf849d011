#!/usr/bin/env bash
# Installs from Debian what berth and its tests need. Idempotent: packages already
# present are not touched, so a second run does nothing and needs no network.
set -euo pipefail

packages=(
  runc                        # default OCI runtime
  crun                        # alternative OCI runtime handler
  containernetworking-plugins # bridge, host-local, portmap, loopback, firewall
  docker-registry             # distribution v2 registry for the e2e tests
  busybox-static              # test images are built from it
  containerd                  # hack/bench.sh measures berth against it (CRI plugin, runc shim)
  protobuf-compiler           # protoc, needed by cri-api/build.rs (compiles proto/cri/.../api.proto)
  iptables                    # portmap / firewall CNI plugins
  iproute2                    # tests inspect links and namespaces
  ca-certificates
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: must run as root" >&2
  exit 1
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# docker-registry's postinst starts a service on :5000 when an init system runs it;
# policy-rc.d keeps package scripts from starting any daemon.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  created_policy=1
fi
trap '[ "$created_policy" = 1 ] && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}"
