package agent

import (
	"bytes"
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"nodeagent/metallb"
)

// planGrace is how long two agents may see different inputs, and decide differently, before
// it counts as a disagreement: changes reach the agents' watches at slightly different times.
const planGrace = 15 * time.Second

// planCheckEvery is how often the digests are compared (and this agent's is gossiped anew when
// it changed).
const planCheckEvery = time.Second

// planMembers is what the check needs of the membership: to publish this agent's digest and
// read everyone's.
type planMembers interface {
	SetMeta(b []byte) error
	Metas() map[string][]byte
}

// planCheck compares this agent's load-balancer decisions with its peers', through the digests
// they gossip as memberlist metadata: each agent decides alone from its own view, so a
// difference of view or configuration (another --lb-class, a Node only some agents see) would
// otherwise make two nodes answer ARP for one address, or none — silently. A disagreement is a
// metric, a log line when it starts and when it ends, and a Warning Event on this node's Node.
type planCheck struct {
	node    string
	digest  func() (metallb.PlanDigest, bool)
	members planMembers
	log     *slog.Logger
	// event, when set (API mode), records a Warning Event about a disagreement with peer.
	event func(peer, message string)
	grace time.Duration
	every time.Duration

	mu    sync.Mutex
	sent  []byte
	peers map[string]*peerPlan
	total uint64 // disagreements started

	totalDesc, nowDesc, comparedDesc *prometheus.Desc
}

// peerPlan is what the check remembers of a peer.
type peerPlan struct {
	differs  time.Time // since when its decision differs from ours (zero: it does not)
	disagree bool
}

func newPlanCheck(node string, digest func() (metallb.PlanDigest, bool), members planMembers, log *slog.Logger) *planCheck {
	return &planCheck{node: node, digest: digest, members: members, log: log, grace: planGrace, every: planCheckEvery,
		peers: map[string]*peerPlan{},
		totalDesc: prometheus.NewDesc("nodeagent_lb_plan_disagreements_total",
			"Times a peer agent started to decide load-balancer addresses, layer-2 owners or BGP routes differently from this one (from the same inputs, or for longer than the grace period).", nil, nil),
		nowDesc: prometheus.NewDesc("nodeagent_lb_plan_peers_disagreeing",
			"Peer agents whose load-balancer decisions differ from this one's now.", nil, nil),
		comparedDesc: prometheus.NewDesc("nodeagent_lb_plan_peers_compared",
			"Alive peer agents whose plan digest this one compares with its own.", nil, nil)}
}

// disagrees is the rule: a peer disagrees when its decision digest differs from ours and either
// its inputs digest is the same (same view, other decisions) or the difference has lasted the
// grace period (views that do not converge).
func disagrees(self, peer metallb.PlanDigest, differingFor, grace time.Duration) bool {
	if self.Decision == peer.Decision {
		return false
	}
	return self.Inputs == peer.Inputs || differingFor >= grace
}

// run compares every interval until ctx ends.
func (c *planCheck) run(ctx context.Context) {
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		c.tick(time.Now())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// tick publishes this agent's digest when it changed and compares it with the peers'.
func (c *planCheck) tick(now time.Time) {
	self, decided := c.digest()
	if !decided {
		return // nothing to gossip or compare before the initial state is assigned
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if b := metallb.EncodeDigest(self); !bytes.Equal(b, c.sent) {
		if err := c.members.SetMeta(b); err != nil {
			c.log.Warn("plan digest not gossiped", "err", err)
		} else {
			c.sent = b
		}
	}
	metas := c.members.Metas()
	for name, p := range c.peers {
		if _, alive := metas[name]; !alive {
			if p.disagree {
				c.log.Info("peer whose load-balancer decisions differed is gone", "peer", name)
			}
			delete(c.peers, name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(metas)) {
		if name == c.node {
			continue
		}
		theirs, ok := metallb.DecodeDigest(metas[name])
		if !ok {
			continue // an older agent, or one that has not decided yet
		}
		p := c.peers[name]
		if p == nil {
			p = &peerPlan{}
			c.peers[name] = p
		}
		if theirs.Decision == self.Decision {
			p.differs = time.Time{}
		} else if p.differs.IsZero() {
			p.differs = now
		}
		dis := disagrees(self, theirs, now.Sub(p.differs), c.grace)
		if dis == p.disagree {
			continue
		}
		p.disagree = dis
		sameInputs := theirs.Inputs == self.Inputs
		if dis {
			c.total++
			why := "from the same inputs"
			if !sameInputs {
				why = "and their views have differed for " + c.grace.String()
			}
			c.log.Warn("load-balancer decisions differ from a peer's: two nodes may announce one address, or none", "peer", name,
				"sameInputs", sameInputs)
			if c.event != nil {
				c.event(name, "load-balancer decisions (addresses, layer-2 owners, BGP routes) of node "+c.node+
					" differ from node "+name+"'s "+why)
			}
		} else {
			c.log.Info("load-balancer decisions agree with the peer again", "peer", name)
		}
	}
}

// Describe implements prometheus.Collector.
func (c *planCheck) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.totalDesc
	ch <- c.nowDesc
	ch <- c.comparedDesc
}

// Collect implements prometheus.Collector.
func (c *planCheck) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, p := range c.peers {
		if p.disagree {
			n++
		}
	}
	ch <- prometheus.MustNewConstMetric(c.totalDesc, prometheus.CounterValue, float64(c.total))
	ch <- prometheus.MustNewConstMetric(c.nowDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(c.comparedDesc, prometheus.GaugeValue, float64(len(c.peers)))
}
