#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build nodeagent and run its lab: the kernel
# tools the proxy modes and tests drive. Idempotent; only calls apt-get when something is missing.
set -euo pipefail
# shellcheck source=scripts/install-missing.sh
source "$(dirname "${BASH_SOURCE[0]}")/install-missing.sh"

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have iptables-restore || need+=(iptables)
have nft || need+=(nftables)
have conntrack || need+=(conntrack)
have ip || need+=(iproute2)
have sysctl || need+=(procps) # the lab sets each namespace's sysctls with sysctl -w
have socat || need+=(socat)
have curl || need+=(curl)
have tcpdump || need+=(tcpdump)
have arping || need+=(arping)
have bird || need+=(bird2)
have gobgpd || need+=(gobgpd)
have ipvsadm || need+=(ipvsadm) # IPVS mode tests compare the kernel's table with ipvsadm -Sn
have qemu-system-x86_64 || need+=(qemu-system-x86) # vm/run: a kernel with IPVS
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' || need+=(busybox-static)
have etcd || need+=(etcd-server)
have vagrant || need+=(vagrant) # the tests run vagrant validate on the Vagrantfile
have make || need+=(make)
have git || need+=(git)
have gcc || need+=(gcc)
# cgo (net, os/user, runtime/cgo in tests) needs libc's headers; gcc only recommends them.
dpkg-query -W -f='${Status}' libc6-dev 2>/dev/null | grep -q 'install ok installed' || need+=(libc6-dev)
if ! have go && [ ! -x /usr/local/go/bin/go ]; then need+=(golang-go); fi

install_missing "deps" ${need[@]+"${need[@]}"}
