#!/usr/bin/env bash
# Builds kube-apiserver and kube-proxy from the module in test/kube/apiserver into a cache directory
# that survives between CI runs on the same machine, and prints that directory as its last line.
#
# The cache is keyed on the module's go.mod and go.sum (which pin k8s.io/kubernetes and every staging
# module) and on the Go version, so a second run with nothing changed does no work at all, and a
# version bump builds into a fresh directory. A cold build takes minutes on 2 cores; the lock keeps
# two test binaries that start at the same time from building twice.
#
#   NODEAGENT_KUBE_CACHE  parent of the cache directories (default /var/cache/nodeagent, or
#                         ~/.cache/nodeagent when that is not writable)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mod="$here/apiserver"
export PATH="$PATH:/usr/local/go/bin"

root="${NODEAGENT_KUBE_CACHE:-/var/cache/nodeagent}"
if ! mkdir -p "$root" 2>/dev/null || [ ! -w "$root" ]; then
  root="${XDG_CACHE_HOME:-$HOME/.cache}/nodeagent"
  mkdir -p "$root"
fi

version="$(awk '$1 == "require" { $1 = ""; $0 = $0 } $1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2 }' "$mod/go.mod")"
if [ -z "$version" ]; then
  echo "build.sh: no k8s.io/kubernetes requirement in $mod/go.mod" >&2
  exit 1
fi
key="$({ cat "$mod/go.mod" "$mod/go.sum"; go env GOVERSION; } | sha256sum | cut -c1-12)"
dir="$root/kube-$version-$key"
bins=(kube-apiserver kube-proxy)

cached() {
  local b
  for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if cached; then
  echo "$dir"
  exit 0
fi

exec 9>"$root/.build.lock"
flock 9
if ! cached; then
  # Whatever a killed build left behind (the lock says no build is running now).
  rm -rf "$root"/.build-*
  major="${version#v}"; major="${major%%.*}"
  minor="${version#v*.}"; minor="${minor%%.*}"
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  tmp="$(mktemp -d "$root/.build-XXXXXX")"
  chmod 755 "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  echo "build.sh: building ${bins[*]} $version into $dir (minutes on a cold cache)" >&2
  start=$(date +%s)
  (cd "$mod" && go build -buildvcs=false -trimpath -ldflags "$ldflags" -o "$tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-proxy)
  # Publish the directory in one rename so that a reader never sees half of it.
  rm -rf "$dir"
  mv "$tmp" "$dir"
  trap - EXIT
  echo "build.sh: built in $(($(date +%s) - start))s" >&2
  # Older builds are dead weight (about 250 MB each).
  for old in "$root"/kube-v*; do
    [ "$old" = "$dir" ] || rm -rf "$old"
  done
fi
echo "$dir"
