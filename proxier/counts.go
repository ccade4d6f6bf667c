package proxier

import (
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// ChangeCounts are the figures behind kube-proxy's change metrics
// (kubeproxy_sync_proxy_rules_{service,endpoint}_changes_{total,pending}).
type ChangeCounts struct {
	// ServiceChanges and EndpointChanges count every Service and EndpointSlice event the proxy
	// looks at, changing anything or not.
	ServiceChanges, EndpointChanges uint64
	// ServicesPending are the Services changed since the last Snapshot; EndpointChangesPending
	// the EndpointSlice events since then that changed something.
	ServicesPending, EndpointChangesPending int64
}

// Trigger is the endpoints.kubernetes.io/last-change-trigger-time of an EndpointSlice change:
// when the change that the slice reflects (a pod or service update) happened.
type Trigger struct {
	Family Family // the slice's address type
	Time   time.Time
}

// MaxTriggers bounds the trigger times one Changes carries, so that a flood of slice updates
// while syncs keep failing cannot grow them without end; later ones are dropped.
const MaxTriggers = 10000

// changeCounts is the tracker's share of ChangeCounts and of Changes.Triggers. Its fields other
// than the atomics are guarded by the tracker's mutex.
type changeCounts struct {
	start time.Time // trigger times before it are not measured, as kube-proxy does

	services, endpoints   atomic.Uint64
	svcPending, epPending atomic.Int64
	pendingSvcs           map[types.NamespacedName]bool
	triggers              []Trigger
}

func newChangeCounts() changeCounts {
	return changeCounts{start: time.Now(), pendingSvcs: map[types.NamespacedName]bool{}}
}

// note records one object the tracker applied; changed says whether it changed anything a
// proxy uses. It counts what kube-proxy's informers would have delivered: objects of the kinds
// and address types it watches that are not labelled to be skipped, and any that left the state.
func (c *changeCounts) note(obj runtime.Object, deleted, changed bool) {
	switch o := obj.(type) {
	case *v1.Service:
		if !changed && Skipped(o.Labels) {
			return
		}
		c.services.Add(1)
		if changed {
			c.pendingSvcs[types.NamespacedName{Namespace: o.Namespace, Name: o.Name}] = true
			c.svcPending.Store(int64(len(c.pendingSvcs)))
		}
	case *discovery.EndpointSlice:
		var f Family
		switch o.AddressType {
		case discovery.AddressTypeIPv4:
			f = IPv4
		case discovery.AddressTypeIPv6:
			f = IPv6
		}
		if f == 0 {
			return // FQDN slices: no proxy looks at them
		}
		present := !Skipped(o.Labels) && o.Labels[LabelServiceName] != ""
		if !changed && !present {
			return
		}
		c.endpoints.Add(1)
		if !changed {
			return
		}
		c.epPending.Add(1)
		// A removed slice's annotation dates from its last update, not from its removal.
		if deleted || !present || len(c.triggers) >= MaxTriggers {
			return
		}
		if t, err := time.Parse(time.RFC3339Nano, o.Annotations[v1.EndpointsLastChangeTriggerTime]); err == nil && t.After(c.start) {
			c.triggers = append(c.triggers, Trigger{Family: f, Time: t})
		}
	}
}

// checkout returns the trigger times since the last call and clears the pending counts: a
// Snapshot has taken every change.
func (c *changeCounts) checkout() []Trigger {
	t := c.triggers
	c.triggers = nil
	clear(c.pendingSvcs)
	c.svcPending.Store(0)
	c.epPending.Store(0)
	return t
}

// ChangeCounts returns the counts behind kube-proxy's change metrics. It takes no lock, so a
// scrape never waits for a Snapshot.
func (t *Tracker) ChangeCounts() ChangeCounts {
	c := &t.counts
	return ChangeCounts{ServiceChanges: c.services.Load(), EndpointChanges: c.endpoints.Load(),
		ServicesPending: c.svcPending.Load(), EndpointChangesPending: c.epPending.Load()}
}
