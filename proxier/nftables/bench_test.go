package nftables

import (
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"nodeagent/proxier"
)

// benchServices is the number of services the benchmarks program (NODEAGENT_BENCH_SERVICES
// overrides the default 1,000), each with 10 endpoints.
func benchServices() int {
	if n, err := strconv.Atoi(os.Getenv("NODEAGENT_BENCH_SERVICES")); err == nil && n > 0 {
		return n
	}
	return 1000
}

// cpuTime is the process's user+system CPU time: on a shared machine it says more about the
// cost of a sync (most of which is the kernel's, inside sendmsg) than wall time does.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkFullSync measures a first sync (table rebuilt from scratch) of N services × 10
// endpoints.
func BenchmarkFullSync(b *testing.B) {
	ns := netns(b)
	p := newProxier(b, ns, proxier.IPv4)
	st := bigState(benchServices(), 10)
	b.ResetTimer()
	cpu := cpuTime()
	for b.Loop() {
		p.rebuild = true
		mustSync(b, p, st, proxier.Changes{Full: true})
	}
	reportCPU(b, cpu)
	b.ReportMetric(float64(p.LastSync().Messages), "msgs/sync")
	b.ReportMetric(float64(p.LastSync().Commit.Nanoseconds()), "commit-ns")
}

// BenchmarkEndpointChange measures the sync of one endpoint change among N services × 10
// endpoints: the endpoint alternates between two addresses.
func BenchmarkEndpointChange(b *testing.B) {
	ns := netns(b)
	p := newProxier(b, ns, proxier.IPv4)
	st := bigState(benchServices(), 10)
	mustSync(b, p, st, proxier.Changes{Full: true})
	victim := st.Services[len(st.Services)/2]
	orig := victim.ClusterEndpoints
	moved := append([]proxier.Endpoint(nil), orig...)
	moved[0].Addr = addr("10.127.0.1")
	ch := changed(victim.Name.NamespacedName)
	b.ResetTimer()
	cpu := cpuTime()
	defer reportCPU(b, cpu)
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			withEndpoints(victim, moved...)
		} else {
			withEndpoints(victim, orig...)
		}
		i++
		mustSync(b, p, st, ch)
	}
	b.ReportMetric(float64(p.LastSync().Messages), "msgs/sync")
}
