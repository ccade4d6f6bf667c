#!/bin/sh
# vm/lab.sh — what `make test-vm` runs inside vm/run: the ipvs package's kernel tests, then the
# lab's scenario rows (ipvs only, or every mode with "all") and the ipvs-only lab tests.
#
#   vm/run --rw KUBE_CACHE -- vm/lab.sh [ipvs|all] [test flags...]
#
# Binaries come prebuilt in bin/vm/ (compiling under emulation takes minutes). Two scenarios run
# one at a time after the others, because next to them the emulated CPUs are too slow for their
# fixed deadlines: KubernetesAPI (kube-apiserver missed its 2-minute start timeout) and
# LoadBalancerLayer2 (memberlist's one-second failure detection saw live agents leave and rejoin,
# so the address moved between nodes while the test looked).
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
alone='(KubernetesAPI|LoadBalancerLayer2)'
# go test matches each level of a test's name against one slash-separated part of the pattern.
"$bin/lab.test" -test.count=1 -test.timeout 20m -test.run "^(TestScenarios|TestIPVS.*)\$/($row|^strict=)" \
  -test.skip "^TestScenarios\$/$row/^$alone\$" "$@"
"$bin/lab.test" -test.count=1 -test.timeout 20m -test.parallel 1 -test.run "^TestScenarios\$/$row/^$alone\$" "$@"
