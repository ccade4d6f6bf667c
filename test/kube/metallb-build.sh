#!/usr/bin/env bash
# Builds MetalLB's controller and speaker at the version below from the Go module proxy into a cache
# directory beside build.sh's (same parent, same lock), and prints that directory as its last line.
# The lab's comparison test (test/netns TestAgainstMetalLB) runs them next to nodeagent.
#
# MetalLB is built as its own main module: its go.mod and go.sum are copied from the module (the
# module cache is read-only, and -mod=mod lets go fill in what go.sum lacks for this Go version), so
# nodeagent's go.mod carries none of MetalLB's dependencies. The cache key hashes this script (the
# recipe, including the version) and the Go version: a second run with nothing changed does nothing.
#
#   NODEAGENT_KUBE_CACHE  parent of the cache directories (default /var/cache/nodeagent, or
#                         ~/.cache/nodeagent when that is not writable)
set -euo pipefail

version=v0.14.8
module=go.universe.tf/metallb
export PATH="$PATH:/usr/local/go/bin"

root="${NODEAGENT_KUBE_CACHE:-/var/cache/nodeagent}"
if ! mkdir -p "$root" 2>/dev/null || [ ! -w "$root" ]; then
  root="${XDG_CACHE_HOME:-$HOME/.cache}/nodeagent"
  mkdir -p "$root"
fi

key="$({ cat "$0"; go env GOVERSION; } | sha256sum | cut -c1-12)"
dir="$root/metallb-$version-$key"
bins=(controller speaker)

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
  [ -d "$dir/crd" ]
}

if cached; then
  echo "$dir"
  exit 0
fi

exec 9>"$root/.build-metallb.lock"
flock 9
if ! cached; then
  rm -rf "$root"/.build-metallb-*
  tmp="$(mktemp -d "$root/.build-metallb-XXXXXX")"
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  echo "build: building MetalLB $version controller and speaker into $dir (minutes on a cold cache)" >&2
  start=$(date +%s)
  src="$(cd "$tmp" && GOFLAGS=-mod=mod go mod download -json "$module@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  if [ -z "$src" ] || [ ! -f "$src/go.mod" ]; then
    echo "build: go mod download $module@$version gave no source directory" >&2
    exit 1
  fi
  # A writable copy of the module: go.sum may need lines for this Go version's standard toolchain.
  cp -r "$src" "$tmp/src"
  chmod -R u+w "$tmp/src"
  mkdir -p "$tmp/out"
  (cd "$tmp/src" && GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w" \
    -o "$tmp/out/" ./controller ./speaker)
  cp -r "$tmp/src/config/crd/bases" "$tmp/out/crd"
  rm -rf "$dir"
  mv "$tmp/out" "$dir"
  echo "build: built in $(($(date +%s) - start))s" >&2
  for old in "$root"/metallb-v*; do
    [ "$old" = "$dir" ] || rm -rf "$old"
  done
fi
echo "$dir"
