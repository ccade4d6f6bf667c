#!/usr/bin/env bash
# Builds the binaries of the cluster harness (test/cluster) into a cache directory that survives
# between runs on the same machine, and prints that directory as its last line.
#
#   build.sh [name...]          build the named binaries if missing (default: all of them)
#   build.sh --check [name...]  build nothing: exit 3, naming what is missing, unless all are there
#
# Names: kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy (from the
# module in tools/, stamped with its k8s.io/kubernetes version), agnhost (static, for an image),
# e2e.test (the upstream e2e suite, go test -c), coredns (static, for an image; its own module at
# the version below, built with go install so that its go.mod decides its dependencies).
#
# The cache is keyed on tools/go.mod and go.sum, the CoreDNS version and the Go version: a second
# run with nothing changed does no work, a version bump builds into a fresh directory. Each binary
# is published with one rename, so a reader never sees half of one, and binaries are built in
# batches: a missing e2e.test does not rebuild kubelet. Cold, on 2 shared cores: kubelet ~5 min,
# kube-controller-manager ~4, kube-scheduler ~1, agnhost ~5, e2e.test ~6, CoreDNS ~5. The lock
# keeps two callers from building at once.
#
#   NODEAGENT_KUBE_CACHE  parent of the cache directories (default /var/cache/nodeagent, or
#                         ~/.cache/nodeagent when that is not writable)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
mod="$here/tools"
coredns_version=v1.12.1
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
key="$({ cat "$mod/go.mod" "$mod/go.sum"; echo "coredns $coredns_version"; go env GOVERSION; } | sha256sum | cut -c1-12)"
dir="$root/cluster-$version-$key"

kube=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl kube-proxy)
all=("${kube[@]}" coredns agnhost e2e.test)
check=
if [ "${1:-}" = --check ]; then
  check=1
  shift
fi
want=("$@")
[ ${#want[@]} -gt 0 ] || want=("${all[@]}")
for b in "${want[@]}"; do
  case " ${all[*]} " in *" $b "*) ;; *) echo "build.sh: unknown binary $b (known: ${all[*]})" >&2; exit 2 ;; esac
done

missing() {
  local b out=()
  for b in "${want[@]}"; do [ -x "$dir/$b" ] || out+=("$b"); done
  echo "${out[*]}"
}

if [ -z "$(missing)" ]; then
  echo "$dir"
  exit 0
fi
if [ -n "$check" ]; then
  echo "build.sh: not built yet: $(missing) (in $dir)" >&2
  exit 3
fi

exec 9>"$root/.cluster-build.lock"
flock 9
todo="$(missing)"
if [ -n "$todo" ]; then
  mkdir -p "$dir"
  rm -rf "$dir"/.build-*
  major="${version#v}"; major="${major%%.*}"
  minor="${version#v*.}"; minor="${minor%%.*}"
  pkg=k8s.io/component-base/version
  ldflags="-s -w -X $pkg.gitVersion=$version -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
  ldflags="$ldflags -X $pkg.gitCommit=0000000000000000000000000000000000000000"
  ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  tmp="$(mktemp -d "$dir/.build-XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  publish() { chmod 755 "$tmp/$1" && mv "$tmp/$1" "$dir/$1"; }
  timed() {
    local name="$1" start
    shift
    start=$(date +%s)
    echo "build.sh: building $name $version into $dir" >&2
    "$@"
    echo "build.sh: $name built in $(($(date +%s) - start))s" >&2
  }
  pkgs=()
  names=()
  for b in $todo; do
    case " ${kube[*]} " in *" $b "*) pkgs+=("k8s.io/kubernetes/cmd/$b"); names+=("$b") ;; esac
  done
  if [ ${#pkgs[@]} -gt 0 ]; then
    timed "${names[*]}" bash -c 'cd "$1" && shift && go build -buildvcs=false -trimpath -ldflags "$@"' _ \
      "$mod" "$ldflags" -o "$tmp/" "${pkgs[@]}"
    for b in "${names[@]}"; do publish "$b"; done
  fi
  case " $todo " in *" coredns "*)
    # go install pkg@version uses CoreDNS's own go.mod (its client-go differs from ours); static,
    # because it runs in an image without a C library.
    timed coredns env GOBIN="$tmp" CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
      go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$coredns_version"
    publish coredns
  esac
  case " $todo " in *" agnhost "*)
    timed agnhost bash -c 'cd "$1" && CGO_ENABLED=0 go build -buildvcs=false -trimpath -ldflags "-s -w" -o "$2" k8s.io/kubernetes/test/images/agnhost' _ \
      "$mod" "$tmp/agnhost"
    publish agnhost
  esac
  case " $todo " in *" e2e.test "*)
    timed e2e.test bash -c 'cd "$1" && go test -c -buildvcs=false -trimpath -ldflags "$2" -o "$3" k8s.io/kubernetes/test/e2e' _ \
      "$mod" "$ldflags" "$tmp/e2e.test"
    publish e2e.test
  esac
  rm -rf "$tmp"
  trap - EXIT
  # Older builds are dead weight (over a gigabyte each with e2e.test).
  for old in "$root"/cluster-v*; do
    [ "$old" = "$dir" ] || rm -rf "$old"
  done
fi
echo "$dir"
