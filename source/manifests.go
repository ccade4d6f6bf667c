package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/apimachinery/pkg/api/equality"
)

// Coalescing of file events: a reload waits until the directory has been quiet for coalesceQuiet
// (editors write a temporary file and rename it, tools write in chunks), but never more than
// coalesceMax after the first event, so that an edit reaches the sink within milliseconds.
const (
	coalesceQuiet = 5 * time.Millisecond
	coalesceMax   = 50 * time.Millisecond
)

// Manifests serves the Kubernetes objects in a directory of manifests, doing what an API server
// and the EndpointSlice controller would have done to them.
//
// The directory is read non-recursively (like kubectl apply -f DIR without -R): every *.yaml,
// *.yml and *.json file that is not hidden, each holding any number of "---"-separated YAML
// documents or concatenated JSON objects, "kind: List" (and typed lists) included. Registered
// kinds are decoded (v1 Service, discovery.k8s.io/v1 EndpointSlice, v1 Node, v1 Pod, and what
// Register adds); other kinds are skipped. Unknown fields are errors, as with kubectl's default
// strict validation. Namespaces default to "default".
//
// Services get the API server's defaults and, when they have none, cluster IPs from ServiceCIDRs
// and node ports from NodePortRange. Allocation is a pure function of the set of manifests, so
// every node reading the same files computes the same values: values a manifest fixes are
// reserved first (in namespace/name order; a later service claiming a taken one is a Problem
// and left out), then each missing value is derived from a hash of the service (and port) name
// with linear probing past taken values. A service keeps its values when unrelated manifests
// change, unless a new service claims one of them explicitly or hashes to the same place and
// sorts before it.
//
// A Service with a selector and no EndpointSlice in the directory (label
// kubernetes.io/service-name) gets the EndpointSlices the EndpointSlice controller would make
// from the Pod manifests it selects. Pods themselves are not delivered.
//
// Two definitions of one object (same kind, namespace and name) are a Problem; the later one in
// file-name and document order is served, as kubectl apply -f DIR would leave it (the seed's
// externalip.yaml is the tutorial's second version of demoapp.yaml's demoapp-clusterip).
//
// Bad input is reported as a Problem and logged; everything else keeps being served. A file that
// parsed before and now does not keeps serving the objects it last produced, and an object that
// was valid before and now is not keeps its last valid version, as the API server would have
// refused the update. (Those two rules depend on history, so they hold for Run, not Load.)
type Manifests struct {
	// Dir is the manifests directory.
	Dir string
	// ServiceCIDRs are the ranges cluster IPs are allocated from, at most one per family, the
	// primary family first (--service-cluster-ip-range). Empty: DefaultServiceCIDR.
	ServiceCIDRs []netip.Prefix
	// NodePortRange is the range node ports are allocated from (--service-node-port-range).
	// Zero: DefaultNodePortRange.
	NodePortRange PortRange
	// Log receives problems and watch errors; nil: slog.Default().
	Log *slog.Logger
}

func (m *Manifests) newLoader() (*loader, error) {
	cidrs := m.ServiceCIDRs
	if len(cidrs) == 0 {
		cidrs = []netip.Prefix{DefaultServiceCIDR}
	}
	if err := checkServiceCIDRs(cidrs); err != nil {
		return nil, err
	}
	ports := m.NodePortRange
	if ports == (PortRange{}) {
		ports = DefaultNodePortRange
	}
	if ports.First == 0 || ports.Last < ports.First {
		return nil, fmt.Errorf("node-port range %s: want 1 <= first <= last", ports)
	}
	return newLoader(m.Dir, cidrs, ports), nil
}

// Load reads every manifest once and returns the objects Run would deliver first (plus the Pods),
// and the problems found. It touches nothing but the files; the error is for a directory that
// cannot be read or an invalid configuration.
func (m *Manifests) Load() (Objects, []Problem, error) {
	l, err := m.newLoader()
	if err != nil {
		return Objects{}, nil, err
	}
	return l.load()
}

func (m *Manifests) log() *slog.Logger {
	if m.Log != nil {
		return m.Log
	}
	return slog.Default()
}

// Run delivers the initial set of objects to sink, calls Synced, then watches the directory and
// delivers the differences after every change (upserts of new and changed objects, deletes of
// vanished ones) until ctx is done. It returns an error only when it cannot start.
func (m *Manifests) Run(ctx context.Context, sink Sink) error {
	log := m.log().With("source", "manifests", "dir", m.Dir)
	l, err := m.newLoader()
	if err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch manifests directory: %w", err)
	}
	defer w.Close()
	// Watch before the first read, so that no change between the two is missed.
	if err := w.Add(m.Dir); err != nil {
		return fmt.Errorf("watch manifests directory %s: %w", m.Dir, err)
	}
	objs, problems, err := l.load()
	if err != nil {
		return err
	}
	reported := logProblems(log, problems, nil)
	objs.Deliver(sink)
	log.Info("manifests loaded", "objects", objs.Len(), "problems", len(problems))

	var timer *time.Timer
	var fire <-chan time.Time
	var first time.Time
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("manifests watcher closed")
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			if fire == nil {
				first = time.Now()
				timer = time.NewTimer(coalesceQuiet)
				fire = timer.C
			} else if time.Since(first) < coalesceMax {
				timer.Reset(coalesceQuiet)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("manifests watcher closed")
			}
			// An overflow means events were lost: reload anyway, a reload reads everything.
			log.Warn("watching manifests directory", "err", err)
			if fire == nil {
				timer = time.NewTimer(0)
				fire = timer.C
			}
		case <-fire:
			fire = nil
			next, problems, err := l.load()
			if err != nil {
				// The directory itself is gone or unreadable: keep serving what we have.
				log.Error("reload manifests; keeping the objects served so far", "err", err)
				continue
			}
			up, del := deliverChanges(sink, objs, next)
			objs = next
			reported = logProblems(log, problems, reported)
			if up+del > 0 {
				log.Debug("manifests changed", "upserts", up, "deletes", del, "took", time.Since(first))
			}
		}
	}
}

// deliverChanges sends sink what changed from old to next: upserts first (in key order, so a
// service arrives before slices generated for it), then deletes.
func deliverChanges(sink Sink, old, next Objects) (upserts, deletes int) {
	var changed, gone []Key
	for k, n := range next.m {
		if o, had := old.m[k]; delivered(k) && (!had || o != n && !equality.Semantic.DeepEqual(o, n)) {
			changed = append(changed, k)
		}
	}
	for k := range old.m {
		if _, still := next.m[k]; !still && delivered(k) {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(changed, compareKeys)
	slices.SortFunc(gone, compareKeys)
	for _, k := range changed {
		sink.Upsert(next.m[k])
	}
	for _, k := range gone {
		sink.Delete(old.m[k])
	}
	return len(changed), len(gone)
}

// logProblems logs the problems not in reported (as they were at the last load) and the ones
// that went away, and returns the new set: a broken file is reported once, not at every reload.
func logProblems(log *slog.Logger, problems []Problem, reported map[Problem]bool) map[Problem]bool {
	now := make(map[Problem]bool, len(problems))
	for _, p := range problems {
		now[p] = true
		if !reported[p] {
			log.Warn("manifest problem", "file", p.File, "document", p.Doc, "item", p.Item,
				"kind", p.Kind, "namespace", p.Namespace, "name", p.Name, "reason", p.Reason)
		}
	}
	for p := range reported {
		if !now[p] {
			log.Info("manifest problem resolved", "problem", p.String())
		}
	}
	return now
}

// Runner is what both sources are: something that feeds a Sink until its context ends.
type Runner interface {
	Run(ctx context.Context, sink Sink) error
}

var _ Runner = (*Manifests)(nil)
