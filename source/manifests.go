package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"syscall"
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
// and left out; in Run, an edited service claiming a value another holds is refused instead, see
// below), then each missing value is derived from a hash of the service (and port) name
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
// parsed before and now does not (or cannot be read) keeps serving the objects it last produced,
// and an object that was valid before and now is not keeps its last valid version, as the API
// server would have refused the update; so does a service edit that claims a cluster IP or node
// port another service holds, or needs one none is left of. (Those rules depend on history, so
// they hold for Run, not Load.) Only regular files (symlinks followed) of at most MaxManifestSize
// bytes are read.
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

	// rescan is how often Run reads the directory without an event; zero: DefaultRescan.
	rescan time.Duration
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

// DefaultRescan is how often Run reads the directory again even when no event came: a watch
// misses changes behind symlinks to other directories, on network file systems, or while the
// directory was being replaced.
const DefaultRescan = 10 * time.Second

// Run delivers the initial set of objects to sink, calls Synced, then watches the directory and
// delivers the differences after every change (upserts of new and changed objects, deletes of
// vanished ones) until ctx is done. It returns an error only when it cannot start.
//
// The directory is followed as a person or a Kubernetes ConfigMap volume replaces it: its parent
// is watched too, so that a directory removed and made again (or a symlink to it swapped) is
// watched anew, and the directory is read again every DefaultRescan whatever the events said.
// While the directory is missing, the objects served so far stay served.
func (m *Manifests) Run(ctx context.Context, sink Sink) error {
	log := m.log().With("source", "manifests", "dir", m.Dir)
	l, err := m.newLoader()
	if err != nil {
		return err
	}
	w, err := newDirWatch(m.Dir, log)
	if err != nil {
		return err
	}
	defer w.close()
	objs, problems, err := l.load()
	if err != nil {
		return err
	}
	reported := logProblems(log, problems, nil)
	objs.Deliver(sink)
	log.Info("manifests loaded", "objects", objs.Len(), "problems", len(problems))

	rescan := m.rescan
	if rescan <= 0 {
		rescan = DefaultRescan
	}
	ticker := time.NewTicker(rescan)
	defer ticker.Stop()
	var timer *time.Timer
	var fire <-chan time.Time
	var first time.Time
	// soon schedules a reload: after coalesceQuiet without events, at most coalesceMax after the
	// first.
	soon := func(quiet time.Duration) {
		if fire == nil {
			first = time.Now()
			timer = time.NewTimer(quiet)
			fire = timer.C
		} else if time.Since(first) < coalesceMax {
			timer.Reset(quiet)
		}
	}
	missing := false // the last reload found no directory
	for {
		select {
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return nil
		case ev, ok := <-w.w.Events:
			if !ok {
				return errors.New("manifests watcher closed")
			}
			if w.relevant(ev) {
				soon(coalesceQuiet)
			}
		case err, ok := <-w.w.Errors:
			if !ok {
				return errors.New("manifests watcher closed")
			}
			// An overflow means events were lost: reload anyway, a reload reads everything.
			log.Warn("watching manifests directory", "err", err)
			soon(0)
		case <-ticker.C:
			w.ensure()
			soon(0)
		case <-fire:
			fire = nil
			// The directory may have been replaced since the last event: watch what is there now
			// before reading it, so that no change after the read is missed.
			w.ensure()
			next, problems, err := l.load()
			if err != nil {
				// The directory itself is gone or unreadable: keep serving what we have.
				if !missing {
					log.Error("reload manifests; keeping the objects served so far", "err", err)
				}
				missing = true
				continue
			}
			if missing {
				log.Info("manifests directory readable again")
				missing = false
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

// dirWatch watches a directory and its parent, so that it can follow the directory when it is
// replaced: removed and made again, renamed over, or (a symlink) pointed elsewhere.
type dirWatch struct {
	w      *fsnotify.Watcher
	log    *slog.Logger
	dir    string // cleaned, absolute
	parent string // "" when dir is the root
	// watching is the identity of the directory the watch on dir is on; zero: none.
	watching fileID
}

// fileID identifies a directory across renames and replacements.
type fileID struct{ dev, ino uint64 }

func statID(path string) (fileID, bool) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileID{}, false
	}
	return fileID{dev: uint64(st.Dev), ino: st.Ino}, true
}

// newDirWatch starts watching dir (which must exist) and, best effort, its parent.
func newDirWatch(dir string, log *slog.Logger) (*dirWatch, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("manifests directory %s: %w", dir, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch manifests directory: %w", err)
	}
	d := &dirWatch{w: w, log: log, dir: abs}
	if p := filepath.Dir(abs); p != abs {
		d.parent = p
		if err := w.Add(p); err != nil {
			// Not fatal: the periodic rescan still notices a replaced directory.
			log.Warn("cannot watch the manifests directory's parent; a replaced directory is noticed by the periodic rescan only", "parent", p, "err", err)
			d.parent = ""
		}
	}
	// Watch before the first read, so that no change between the two is missed.
	id, _ := statID(abs)
	if err := w.Add(abs); err != nil {
		w.Close()
		return nil, fmt.Errorf("watch manifests directory %s: %w", dir, err)
	}
	d.watching = id
	return d, nil
}

func (d *dirWatch) close() { d.w.Close() }

// relevant reports whether ev may change what the directory serves: anything inside it, or the
// directory's own entry in its parent; not the parent's other entries.
func (d *dirWatch) relevant(ev fsnotify.Event) bool {
	if ev.Op == fsnotify.Chmod {
		return false
	}
	if filepath.Dir(ev.Name) == d.parent && ev.Name != d.dir {
		return false
	}
	return true
}

// ensure watches the directory now at d.dir if the watch is not on it (it was removed, replaced
// or re-pointed since).
func (d *dirWatch) ensure() {
	id, ok := statID(d.dir)
	if ok && id == d.watching {
		return
	}
	if d.watching != (fileID{}) {
		// The old directory may still exist elsewhere (renamed away, or the old target of a
		// symlink): stop watching it. Gone, its watch has gone with it (an error here).
		_ = d.w.Remove(d.dir)
		d.watching = fileID{}
	}
	if !ok {
		return // missing for now; its creation is an event in the parent, or the rescan sees it
	}
	if err := d.w.Add(d.dir); err != nil {
		d.log.Warn("watch the replaced manifests directory", "err", err)
		return
	}
	d.watching = id
	d.log.Info("watching the manifests directory anew", "dir", d.dir)
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
				"kind", p.Kind, "namespace", p.Object.Namespace, "name", p.Object.Name, "reason", p.Reason)
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
