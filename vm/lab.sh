#!/bin/sh
# vm/lab.sh — what `make test-vm` runs inside vm/run: the ipvs package's kernel tests, then the
# lab's scenario rows (ipvs only, or every mode with "all") and the ipvs-only lab tests.
#
#   vm/run --rw KUBE_CACHE -- vm/lab.sh [ipvs|all] [test flags...]
#
# Binaries come prebuilt in bin/vm/ (compiling under emulation takes minutes). The KubernetesAPI
# scenario runs on its own after the others: its kube-apiserver needs most of the VM's two
# emulated CPUs to become ready within its start timeout, which it missed next to the other
# scenarios.
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
modes=${1:-ipvs}
[ $# -gt 0 ] && shift
bin=$repo/bin/vm
export NODEAGENT_BIN="$bin/nodeagent" NODEAGENT_TIMEOUT_SCALE="${NODEAGENT_TIMEOUT_SCALE:-5}"

cd "$repo/proxier/ipvs"
"$bin/ipvs.test" -test.count=1 -test.run '^TestKernel' "$@"

cd "$repo/test/netns"
case "$modes" in
  all) row='.*' ;;
  ipvs) row='^ipvs$' ;;
  *) echo "vm/lab.sh: modes must be ipvs or all" >&2; exit 2 ;;
esac
# go test matches each level of a test's name against one slash-separated part of the pattern.
"$bin/lab.test" -test.count=1 -test.timeout 20m -test.run "^(TestScenarios|TestIPVS.*)\$/($row|^strict=)" \
  -test.skip "^TestScenarios\$/$row/^KubernetesAPI\$" "$@"
"$bin/lab.test" -test.count=1 -test.timeout 20m -test.parallel 1 -test.run "^TestScenarios\$/$row/^KubernetesAPI\$" "$@"
