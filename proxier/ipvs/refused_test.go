package ipvs

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	mipvs "github.com/moby/ipvs"

	"nodeagent/proxier"
)

// A virtual server the kernel refuses — here a Service whose annotation asks for a scheduler
// whose module this kernel lacks — is reported (Refused, SyncStats, one log line) while every
// other service is applied and the Sync succeeds; it is retried, and accepted once it asks for
// something the kernel has. A refused change of an existing virtual server keeps its settings
// and still updates its real servers.
func TestRefusedVirtualServer(t *testing.T) {
	var logs bytes.Buffer
	p, k := fakeProxier(slog.New(slog.NewTextHandler(&logs, nil)), "wlc")
	st := testState()
	myappVS := vsKey{Addr: addr("10.96.0.20"), Proto: 6, Port: 80}
	demoVS := vsKey{Addr: addr("10.96.0.10"), Proto: 6, Port: 80}
	refusedOf := func(name string) int {
		n := 0
		for _, r := range p.Refused() {
			if r.Service.Name == name {
				n++
			}
		}
		return n
	}
	for i := range 2 {
		if err := p.Sync(context.Background(), st, proxier.Changes{Full: true}); err != nil {
			t.Fatalf("sync %d with one refused service: %v", i, err)
		}
	}
	if len(k.realServers(demoVS)) != 3 {
		t.Errorf("demoapp's real servers %v, want 3: the other services must be applied", k.realServers(demoVS))
	}
	if k.scheduler(myappVS) != "" {
		t.Error("the fake accepted wlc")
	}
	// myapp has a cluster IP, a node port and a load-balancer IP.
	if n := refusedOf("myapp"); n != 3 || len(p.Refused()) != 3 || p.LastSync().Refused != 3 {
		t.Errorf("refused %+v, stats %d; want myapp's three virtual servers", p.Refused(), p.LastSync().Refused)
	}
	if r := p.Refused()[0]; !strings.Contains(r.Reason, "no such file or directory") || r.VirtualServer == "" {
		t.Errorf("refusal %+v lacks the kernel's answer", r)
	}
	if n := strings.Count(logs.String(), "the kernel refused"); n != 3 {
		t.Errorf("%d log lines about refusals after two syncs, want one per virtual server:\n%s", n, logs.String())
	}

	fixed := cloneState(st)
	service(fixed, "myapp", proxier.IPv4).Scheduler = ""
	if err := p.Sync(context.Background(), fixed, changed(nsName("default", "myapp"))); err != nil {
		t.Fatal(err)
	}
	if k.scheduler(myappVS) != DefaultScheduler || len(p.Refused()) != 0 {
		t.Errorf("after asking for rr: scheduler %q, refused %+v", k.scheduler(myappVS), p.Refused())
	}

	changedSched := cloneState(fixed)
	demo := service(changedSched, "demoapp", proxier.IPv4)
	demo.Scheduler = "wlc"
	withEndpoints(demo, append(slices.Clone(demo.AllEndpoints), ep("10.244.3.6", 80, "node03"))...)
	if err := p.Sync(context.Background(), changedSched, changed(nsName("default", "demoapp"))); err != nil {
		t.Fatal(err)
	}
	if k.scheduler(demoVS) != DefaultScheduler || len(k.realServers(demoVS)) != 4 || refusedOf("demoapp") == 0 {
		t.Errorf("refused update: scheduler %q, real servers %v, refused %+v; want rr kept, the new endpoint added, demoapp reported",
			k.scheduler(demoVS), k.realServers(demoVS), p.Refused())
	}
}

// TestRetireQuiescesFirst: a TCP endpoint that leaves its service had no connections when the
// sync read the kernel, but IPVS schedules one to it before the sync gets to it. The real server
// must go to weight 0 first and stay while that connection lives (deleting it would reset the
// connection); one that still has none after the quiesce is deleted at once.
func TestRetireQuiescesFirst(t *testing.T) {
	p, k := fakeProxier(slog.New(slog.DiscardHandler))
	st := testState()
	mustSync(t, p, st, proxier.Changes{Full: true})
	demoVS := vsKey{Addr: addr("10.96.0.10"), Proto: 6, Port: 80}
	busy, idle := netip.MustParseAddrPort("10.244.2.5:80"), netip.MustParseAddrPort("10.244.3.5:80")
	k.scheduled = func(vk vsKey, d *mipvs.Destination) {
		if vk == demoVS && destAddr(d) == busy && d.Weight != 0 {
			d.ActiveConnections = 1
		}
	}
	next := cloneState(st)
	sp := service(next, "demoapp", proxier.IPv4)
	withEndpoints(sp, sp.AllEndpoints[:1]...)
	mustSync(t, p, next, changed(nsName("default", "demoapp")))
	got := k.realServers(demoVS)
	if !slices.Contains(got, busy) || slices.Contains(got, idle) {
		t.Fatalf("real servers %v: want %s kept (a connection arrived before its weight was 0) and %s deleted", got, busy, idle)
	}
	if w := k.weight(demoVS, busy); w != 0 {
		t.Errorf("%s has weight %d, want 0 while it drains", busy, w)
	}
}
