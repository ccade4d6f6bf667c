#!/usr/bin/env bash
# Builds the CI image (Containerfile) without a registry and prints its name as the last line.
#
#   1. A minimal Debian bookworm root filesystem from debootstrap, cached as a tarball in
#      $root/ci-rootfs-<key of the debootstrap recipe>.tar and imported as nodeagent-ci-base:<key>.
#   2. The build context in $root/ci-image-<key>: Go from the module proxy (golang.org/toolchain at
#      go.mod's toolchain version), scripts/deps.sh, test/kube's build script and module, this
#      module's go.mod, go.sum and the list of its dependencies to precompile.
#   3. podman build --network=host on top of the base, tagged nodeagent-ci:<key>, where the key
#      hashes everything in the context. A tag that exists is reused: nothing is done twice.
#
# The network is needed only here (apt, the module proxy); --network=host for a build step uses
# the host's interfaces as they are and creates none. Needs root, podman, buildah, runc and
# debootstrap (test/container/deps.sh).
#
#   NODEAGENT_KUBE_CACHE  parent of the cache directories (default /var/cache/nodeagent)
#   NODEAGENT_CI_MIRROR   Debian mirror (default http://deb.debian.org/debian)
#   NODEAGENT_CI_CA       CA bundle the build steps trust for downloads (default $SSL_CERT_FILE, else
#                         /etc/ssl/certs/ca-certificates.crt): mounted while building, never copied
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PATH="$PATH:/usr/local/go/bin"

root="${NODEAGENT_KUBE_CACHE:-/var/cache/nodeagent}"
mkdir -p "$root"
mirror="${NODEAGENT_CI_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
include=ca-certificates

log() { echo "container/build.sh: $*" >&2; }
hash() { sha256sum | cut -c1-12; }

exec 9>"$root/.ci-image.lock"
flock 9

# 1. The base: debootstrap's minbase, keyed on what decides its content.
base_key="$(printf '%s\n' "$suite" "$mirror" minbase "$include" "$(dpkg-query -W -f='${Version}' debootstrap)" | hash)"
base="localhost/nodeagent-ci-base:$base_key"
rootfs="$root/ci-rootfs-$base_key.tar"
if ! podman image exists "$base"; then
  if [ ! -s "$rootfs" ]; then
    log "debootstrap $suite from $mirror (a few minutes)"
    tmp="$(mktemp -d "$root/.ci-rootfs-XXXXXX")"
    trap 'rm -rf "$tmp"' EXIT
    debootstrap --variant=minbase --include="$include" "$suite" "$tmp/rootfs" "$mirror" >"$tmp/log" 2>&1 ||
      { tail -30 "$tmp/log" >&2; exit 1; }
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/*
    tar -C "$tmp/rootfs" --numeric-owner -cf "$tmp/rootfs.tar" .
    for old in "$root"/ci-rootfs-*.tar; do [ -e "$old" ] && rm -f "$old"; done
    mv "$tmp/rootfs.tar" "$rootfs"
    rm -rf "$tmp"
    trap - EXIT
  fi
  podman import --quiet "$rootfs" "$base" >/dev/null
fi

# 2. The context.
toolchain="$(awk '$1 == "toolchain" { print $2 }' "$repo/go.mod")"
[ -n "$toolchain" ] || toolchain="go$(awk '$1 == "go" { print $2 }' "$repo/go.mod")"
tcmod="golang.org/toolchain@v0.0.1-$toolchain.linux-amd64"
# The zip's hash (go.sum style) stands for the toolchain in the key; downloading is a no-op when cached.
tcjson="$(cd / && GOFLAGS= go mod download -json "$tcmod")"
tczip="$(sed -n 's/^[[:space:]]*"Zip": "\(.*\)",$/\1/p' <<<"$tcjson")"
tcsum="$(sed -n 's/^[[:space:]]*"Sum": "\(.*\)",$/\1/p' <<<"$tcjson")"
[ -s "$tczip" ] || { log "go mod download $tcmod: no zip"; exit 1; }

stage="$(mktemp -d "$root/.ci-context-XXXXXX")"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/mod" "$stage/kube"
cp "$here/Containerfile" "$stage/"
cp "$repo/scripts/deps.sh" "$repo/scripts/install-missing.sh" "$stage/"
cp "$repo/go.mod" "$repo/go.sum" "$stage/mod/"
cp -r "$repo/test/kube/build.sh" "$repo/test/kube/apiserver" "$stage/kube/"
cp "$repo/test/kube/metallb-build.sh" "$stage/"
# What the tests import from outside this module (std included), to compile into the image's
# build cache. vendor/ paths of std cannot be named; they come with their importers.
(cd "$repo" && GOFLAGS=-mod=mod go list -deps -test -f '{{.ImportPath}}' ./...) |
  grep -v -e '^nodeagent' -e ' ' -e '\.test$' -e '^vendor/' | sort -u >"$stage/mod/deps.txt"

key="$({ echo "$base_key" "$tcsum"; cd "$stage" && find . -type f | LC_ALL=C sort | xargs sha256sum; } | hash)"
image="localhost/nodeagent-ci:$key"
ctx="$root/ci-image-$key"
if podman image exists "$image"; then
  echo "$image"
  exit 0
fi

rm -rf "$ctx"
mv "$stage" "$ctx"
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/go"
unzip -q "$tczip" -d "$ctx/.tc"
mv "$ctx/.tc/$tcmod"/* "$ctx/go/"
rm -rf "$ctx/.tc"
chmod -R u+w,a+rX "$ctx/go"
chmod a+x "$ctx/go/bin/"* "$ctx"/go/pkg/tool/*/*

ca="${NODEAGENT_CI_CA:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
caflags=()
if [ -s "$ca" ]; then
  caflags=(--volume "$ca:/run/build-ca.crt:ro" --build-arg SSL_CERT_FILE=/run/build-ca.crt)
fi

log "podman build $image (cold: Debian packages, kube-apiserver and the modules; many minutes)"
start=$(date +%s)
podman build --runtime runc --network=host --layers "${caflags[@]}" --build-arg BASE="$base" -t "$image" -f "$ctx/Containerfile" "$ctx" >&2
log "built in $(($(date +%s) - start))s"
# The context is only needed to build; older images of this recipe are dead weight.
rm -rf "$ctx"
trap - EXIT
for old in $(podman images --format '{{.Repository}}:{{.Tag}}' | grep -e '^localhost/nodeagent-ci:' | grep -v -x "$image"); do
  podman rmi "$old" >/dev/null 2>&1 || true
done
echo "$image"
