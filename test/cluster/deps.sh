#!/usr/bin/env bash
# Installs what the cluster harness needs beyond scripts/deps.sh: Debian's containerd, runc and the
# CNI plugins (bridge, host-local, portmap, loopback). Idempotent; calls apt-get only when something
# is missing. Nothing is started: the harness runs its own containerd per node, in the node's
# namespaces (there is no init system here to start the packaged service, and none is wanted).
set -euo pipefail
# shellcheck source=scripts/install-missing.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/install-missing.sh"

need=()
have() { command -v "$1" >/dev/null 2>&1; }
{ have containerd && have ctr; } || need+=(containerd)
have runc || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
# What the e2e suite runs inside its agnhost image (make conformance copies them in): OpenBSD's nc
# (nc -v -t; busybox's lacks -t), dig and nslookup.
[ -x /usr/bin/nc.openbsd ] || need+=(netcat-openbsd)
have dig || need+=(bind9-dnsutils)

install_missing "cluster deps" ${need[@]+"${need[@]}"}
