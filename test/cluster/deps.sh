#!/usr/bin/env bash
# Installs what the cluster harness needs beyond scripts/deps.sh: Debian's containerd, runc and the
# CNI plugins (bridge, host-local, portmap, loopback). Idempotent; calls apt-get only when something
# is missing. Nothing is started: the harness runs its own containerd per node, in the node's
# namespaces (there is no init system here to start the packaged service, and none is wanted).
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
{ have containerd && have ctr; } || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# What the e2e suite runs inside its agnhost image (make conformance copies them in): OpenBSD's nc
# (nc -v -t; busybox's lacks -t), dig and nslookup.
[ -x /usr/bin/nc.openbsd ] || need+=(netcat-openbsd)
have dig || need+=(bind9-dnsutils)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "cluster deps: missing ${need[*]}; run as root (sudo) so they can be installed" >&2
    exit 1
  fi
  echo "cluster deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
