#!/usr/bin/env bash
# Installs what the host needs to build and run the CI container (make test-container): podman and
# buildah to build and run the image, runc as their OCI runtime (Debian's default, crun, refuses
# a host with hybrid cgroups: "cgroups in hybrid mode not supported"), debootstrap to make its
# Debian base without a registry.
# Idempotent; only calls apt-get when something is missing.
set -euo pipefail
# shellcheck source=scripts/install-missing.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/install-missing.sh"

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have podman || need+=(podman)
have buildah || need+=(buildah)
have runc || need+=(runc)
have debootstrap || need+=(debootstrap)
have unzip || need+=(unzip)
have sha256sum || need+=(coreutils)

install_missing "container deps" ${need[@]+"${need[@]}"}
