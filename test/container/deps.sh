#!/usr/bin/env bash
# Installs what the host needs to build and run the CI container (make test-container): podman and
# buildah to build and run the image, runc as their OCI runtime (Debian's default, crun, refuses
# a host with hybrid cgroups: "cgroups in hybrid mode not supported"), debootstrap to make its
# Debian base without a registry.
# Idempotent; only calls apt-get when something is missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have podman || need+=(podman)
have buildah || need+=(buildah)
have runc || need+=(runc)
have debootstrap || need+=(debootstrap)
have unzip || need+=(unzip)
have sha256sum || need+=(coreutils)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "container deps: missing ${need[*]}; run as root (sudo) so they can be installed" >&2
    exit 1
  fi
  echo "container deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
