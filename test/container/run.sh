#!/usr/bin/env bash
# make test-container: the unit, real-kernel and lab tests inside a privileged container from the
# CI image (build.sh), as CI systems that run privileged containers do. The repository is the only
# thing taken from the host (mounted at /src); Go, the modules, kube-apiserver, etcd, BIRD and the
# kernel tools come from the image, and the container has no network at all (--network=none: its
# own empty network namespace, in which the lab makes its own). The host's network namespace is
# never touched: no bridge, no firewall rules, no port mappings.
#
#   CONTAINER_IMAGE      run this image instead of building (build.sh's name for the current recipe)
#   CONTAINER_PKGS       packages to test (default: ./... without ./vm, which boots a VM and
#                        downloads its kernel; make test-vm runs it)
#   CONTAINER_TESTFLAGS  go test flags (default -v -timeout 30m)
#   CONTAINER_LOG        the whole test output (default bin/container/test.log); the terminal gets
#                        the package lines, failures and the counts
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

image="${CONTAINER_IMAGE:-$("$here/build.sh" | tail -1)}"
pkgs="${CONTAINER_PKGS:-$(cd "$repo" && go list ./... | grep -v -x nodeagent/vm | sed 's|^nodeagent|.|' | tr '\n' ' ')}"
testflags="${CONTAINER_TESTFLAGS:--v -timeout 30m}"
log="${CONTAINER_LOG:-$repo/bin/container/test.log}"
mkdir -p "$(dirname "$log")"

cid=""
cleanup() { [ -z "$cid" ] || podman rm -f "$cid" >/dev/null; }
trap cleanup EXIT INT TERM
# GOPROXY=off: a module missing from the image fails the run instead of looking for a network
# that is not there.
# Explicit limits: podman asks for nofile 1048576 and a large nproc by default, which a host with
# lower hard limits refuses ("error setting rlimit ...: operation not permitted"; here nofile above
# 20000 and nproc above a few thousand). nofile is the host's hard limit; nproc does not bind a
# privileged root anyway (CAP_SYS_RESOURCE). --shm-size: test/kube keeps etcd's data in /dev/shm,
# and podman's default 64 MB ran out with two control planes at once ("no space left on device").
nofile="$(ulimit -Hn)"
[ "$nofile" = unlimited ] && nofile=1048576
cid="$(podman create --runtime runc --privileged --network=none --shm-size=2g -v "$repo:/src" -w /src \
  --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096 \
  -e GOPROXY=off -e GOFLAGS="-mod=mod -buildvcs=false" \
  "$image" bash -c 'go version && go test -count=1 '"$testflags $pkgs")"
echo "container: $image, container ${cid:0:12}, packages: $pkgs" | tee "$log"
start=$(date +%s)
set +e
podman start --attach "$cid" >>"$log" 2>&1
status=$?
set -e
grep -E '^(ok|FAIL|panic:|go version)|^\s*--- FAIL' "$log" || true
count() { grep -cE "^\s*--- $1" "$log" || true; }
echo "container: go test exited $status after $(($(date +%s) - start))s;" \
  "tests and subtests passed $(count PASS), failed $(count FAIL), skipped $(count SKIP); log: $log" | tee -a "$log"
exit "$status"
