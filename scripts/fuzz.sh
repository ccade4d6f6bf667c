#!/usr/bin/env bash
# Runs every fuzz target of the module for FUZZTIME each (default 10s), one after another (go test
# takes one -fuzz target per run). Found crashers land in the package's testdata/fuzz, where they
# become regression inputs of the plain test run. Usage: scripts/fuzz.sh [FUZZTIME]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
fuzztime="${1:-${FUZZTIME:-10s}}"
targets=$(grep -rl --include='*_test.go' '^func Fuzz' . | sort)
n=0
for f in $targets; do
  pkg="./$(dirname "${f#./}")"
  for name in $(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' "$f"); do
    echo "fuzz: $pkg $name for $fuzztime"
    # -fuzzminimizetime bounds the minimisation of large seed inputs, which otherwise eats the run.
    go test -run '^$' -fuzz "^${name}\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s "$pkg"
    n=$((n + 1))
  done
done
echo "fuzz: $n targets ran $fuzztime each without a finding"
