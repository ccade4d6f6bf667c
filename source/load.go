package source

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

// Load reads every manifest in dir with the API server's default service CIDR and node-port
// range. See Manifests.Load.
func Load(dir string) (Objects, []Problem, error) {
	return (&Manifests{Dir: dir}).Load()
}

// manifestFile reports whether a directory entry name is a manifest: *.yaml, *.yml or *.json,
// not hidden (editors' swap and lock files, Kubernetes' ..data volume links are hidden).
func manifestFile(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false
	}
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

// MaxManifestSize is the largest manifest file read, 8 MiB: a larger file is a Problem (and its last
// good version stays served), so that a runaway file cannot make every reload read and parse it.
// Kubernetes stores objects of at most 1.5 MiB, and a ConfigMap holds at most 1 MiB.
const MaxManifestSize = 8 << 20

// errSkip marks a directory entry that is not a manifest after all (a directory named *.yaml).
var errSkip = errors.New("not a file")

// readManifest reads a manifest file, following symlinks. Only regular files of at most
// MaxManifestSize bytes are read: a FIFO named *.yaml would block a plain open or read forever,
// and a device or a huge file would be read without end. The file is opened non-blocking (a FIFO
// swapped in after the Stat does not block the open) and checked again once open.
func readManifest(path string) ([]byte, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.IsDir() {
		return nil, errSkip
	}
	if err := checkRegular(info); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if info, err = f.Stat(); err != nil {
		return nil, err
	}
	if err := checkRegular(info); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxManifestSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxManifestSize {
		return nil, fmt.Errorf("larger than %d MiB; not read", MaxManifestSize>>20)
	}
	return data, nil
}

func checkRegular(info fs.FileInfo) error {
	if info.IsDir() {
		return errSkip
	}
	if !info.Mode().IsRegular() {
		return fmt.Errorf("not a regular file (%s); not read", info.Mode().Type())
	}
	if info.Size() > MaxManifestSize {
		return fmt.Errorf("%d bytes, larger than %d MiB; not read", info.Size(), MaxManifestSize>>20)
	}
	return nil
}

// fileState is what a loader remembers of one manifest file.
type fileState struct {
	sum  [sha256.Size]byte
	last parsed  // the latest parse
	good *parsed // the latest parse in which every document decoded; nil: none yet
}

// loader turns a directory into Objects. It remembers each file's last good parse and each
// object's last valid version, so that a broken edit keeps the previous state served, and it
// parses only files whose content changed.
type loader struct {
	dir       string
	cidrs     []netip.Prefix
	nodePorts PortRange
	files     map[string]*fileState
	lastValid map[Key]*document
	served    map[Key]servedService
	generated map[Key]generatedSlices
	last      *loaded // the last load's result; nil before the first
}

func newLoader(dir string, cidrs []netip.Prefix, nodePorts PortRange) *loader {
	return &loader{dir: dir, cidrs: cidrs, nodePorts: nodePorts,
		files: map[string]*fileState{}, lastValid: map[Key]*document{}}
}

// load reads the directory (not recursively: like kubectl apply -f without -R). The error is for
// a directory that cannot be read at all; everything else is a Problem.
func (l *loader) load() (Objects, []Problem, error) {
	entries, err := os.ReadDir(l.dir)
	if err != nil {
		return Objects{}, nil, fmt.Errorf("read manifests directory: %w", err)
	}
	var docs []*document
	var problems []Problem
	seen := map[string]bool{}
	// A file that could not be read has no state to compare with: reload until it can be.
	changed := l.last == nil || l.last.unread
	unread := false
	for _, e := range entries {
		if !manifestFile(e.Name()) {
			continue
		}
		path := filepath.Join(l.dir, e.Name())
		data, err := readManifest(path)
		if errors.Is(err, errSkip) || errors.Is(err, fs.ErrNotExist) {
			continue // a directory; removed meanwhile, or a dangling link
		}
		fsState := l.files[path]
		seen[path] = true
		if err != nil {
			changed, unread = true, true
			problems = append(problems, Problem{File: path, Reason: err.Error()})
			if fsState != nil && fsState.good != nil {
				problems = append(problems, Problem{File: path, Reason: "serving its last good version"})
				docs = append(docs, fsState.good.docs...)
			}
			continue
		}
		sum := sha256.Sum256(data)
		if fsState == nil || fsState.sum != sum {
			changed = true
			if fsState == nil {
				fsState = &fileState{}
				l.files[path] = fsState
			}
			fsState.sum, fsState.last = sum, decodeFile(path, data)
			if fsState.last.ok {
				good := fsState.last
				fsState.good = &good
			}
		}
		problems = append(problems, fsState.last.problems...)
		switch {
		case fsState.last.ok:
			docs = append(docs, fsState.last.docs...)
		case fsState.good != nil:
			problems = append(problems, Problem{File: path, Reason: "serving its last good version"})
			docs = append(docs, fsState.good.docs...)
		default:
			// Never parsed completely: serve the documents that did decode.
			docs = append(docs, fsState.last.docs...)
		}
	}
	for path := range l.files {
		if !seen[path] {
			delete(l.files, path)
			changed = true
		}
	}
	if !changed {
		// The same files with the same content: the same result (a periodic rescan costs reading
		// and hashing, not combining).
		return l.last.objs, l.last.problems, nil
	}
	objs, more := l.combine(docs)
	problems = append(problems, more...)
	l.last = &loaded{objs: objs, problems: problems, unread: unread}
	return objs, problems, nil
}

// loaded is the result of a load.
type loaded struct {
	objs     Objects
	problems []Problem
	unread   bool // some file could not be read
}

// combine validates the decoded documents (in file order), keeps the last of duplicates, applies
// the API server's defaults, allocates cluster IPs and node ports, and makes EndpointSlices from
// Pods.
func (l *loader) combine(docs []*document) (Objects, []Problem) {
	var problems []Problem
	var order []*document
	// A later definition replaces an earlier one, as `kubectl apply -f DIR` applies files in name
	// order: the seed's externalip.yaml is the tutorial's second version of demoapp-clusterip.
	at := map[Key]int{}
	for _, d := range docs {
		if i, dup := at[d.key]; dup {
			first := order[i]
			problems = append(problems, first.problem("duplicate: replaced by %s document %d", d.file, d.doc))
			order[i] = d
			continue
		}
		at[d.key] = len(order)
		order = append(order, d)
	}

	valid := map[Key]*document{}
	for _, d := range order {
		r := d.validate()
		if len(r) == 0 {
			valid[d.key] = d
			continue
		}
		reason := strings.Join(r, "; ")
		if last := l.lastValid[d.key]; last != nil {
			reason += "; serving its last valid version"
			valid[d.key] = last
		}
		problems = append(problems, d.problem("%s", reason))
	}
	l.lastValid = valid

	keys := make([]Key, 0, len(valid))
	for k := range valid {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)

	out := make(map[Key]runtime.Object, len(valid))
	var services []*document
	pods := podIndex{}
	nodes := map[string]*v1.Node{}
	haveSlice := map[[2]string]bool{} // namespace, service name
	for _, k := range keys {
		d := valid[k]
		switch o := d.object().(type) {
		case *v1.Service:
			services = append(services, d)
			continue // added once allocated
		case *discoveryv1.EndpointSlice:
			if s := o.Labels[discoveryv1.LabelServiceName]; s != "" {
				haveSlice[[2]string{o.Namespace, s}] = true
			}
		case *v1.Pod:
			pods.add(o)
		case *v1.Node:
			nodes[o.Name] = o
		}
		out[k] = d.object()
	}

	allocated, more := l.allocateServices(services)
	problems = append(problems, more...)
	served := make(map[Key]servedService, len(services))
	generated := map[Key]generatedSlices{}
	for i, d := range services {
		e := allocated[i]
		if e.plan == nil {
			continue
		}
		// The same document with the same allocation as at the last load: serve the same object,
		// so that telling what changed costs a pointer comparison.
		var svc *v1.Service
		if prev, ok := l.served[d.key]; ok && prev.doc == e.doc && prev.alloc.equal(e.alloc) {
			svc = prev.obj
		} else {
			svc = e.alloc.apply(e.svc)
		}
		served[d.key] = servedService{doc: e.doc, alloc: e.alloc, obj: svc}
		out[d.key] = svc
		if len(svc.Spec.Selector) == 0 || svc.Spec.Type == v1.ServiceTypeExternalName ||
			haveSlice[[2]string{svc.Namespace, svc.Name}] {
			continue
		}
		selected := pods.selected(svc.Namespace, svc.Spec.Selector)
		podNodes := make([]*v1.Node, len(selected))
		for i, p := range selected {
			podNodes[i] = nodes[p.Spec.NodeName]
		}
		g, ok := l.generated[d.key]
		if !ok || g.svc != svc || !slices.Equal(g.pods, selected) || !slices.Equal(g.nodes, podNodes) {
			g = generatedSlices{svc: svc, pods: selected, nodes: podNodes, slices: endpointSlicesFor(svc, selected, nodes)}
		}
		generated[d.key] = g
		for _, es := range g.slices {
			k := objectKey(es)
			if _, taken := out[k]; taken {
				problems = append(problems, Problem{Kind: "EndpointSlice", Object: types.NamespacedName{Namespace: es.Namespace, Name: es.Name},
					Reason: fmt.Sprintf("generated for service %s from its pods, but the name is taken", svc.Name)})
				continue
			}
			out[k] = es
		}
	}
	l.generated = generated
	l.served = served
	return Objects{m: out}, problems
}

// allocatedService is what allocateServices decided for one service.
type allocatedService struct {
	doc   *document   // the document served: the last served one when the current one is refused
	svc   *v1.Service // its object, defaulted
	plan  *plan       // nil: not served
	alloc allocation
}

// allocateServices allocates cluster IPs and node ports as the API server would have when each
// service was created: explicit values first (a later service claiming a taken value is
// rejected), then the missing ones, derived from a hash of the name.
//
// It also remembers what the last load served, as the API server remembers what it stored:
// edits are applied one by one (in key order) to what was served, so an edit that claims a value
// another service holds, or needs a node port or cluster IP none is left of, is refused and the
// edited service keeps its last served version, rather than taking the other service (or itself)
// away. Values derived from a hash stay a function of the manifests, as before.
func (l *loader) allocateServices(services []*document) ([]allocatedService, []Problem) {
	incumbent := make([]bool, len(services))
	for i, d := range services {
		incumbent[i] = l.incumbent(d)
	}
	// Edits that fit their explicit values but not the derived ones: served as they were, on the
	// next pass. A pass is linear; there is one more per such edit.
	forced := map[int]error{}
	for {
		out, problems, i, err := l.allocateOnce(services, incumbent, forced)
		if err == nil {
			return out, problems
		}
		forced[i] = err
	}
}

// allocateOnce is one pass of allocateServices. When an edited service's values cannot all be
// derived it stops and returns the service's index and why.
func (l *loader) allocateOnce(services []*document, incumbent []bool, forced map[int]error) ([]allocatedService, []Problem, int, error) {
	var problems []Problem
	alloc := newAllocator(l.cidrs, l.nodePorts)
	out := make([]allocatedService, len(services))
	// Every service served last time holds the explicit values of the version it served.
	held := make([]bool, len(services))
	for i, d := range services {
		prev, ok := l.served[d.key]
		if !ok {
			continue
		}
		svc := prev.doc.object().(*v1.Service)
		if p, err := alloc.planService(svc); err == nil && alloc.reserve(svc, p) == nil {
			held[i] = true
			out[i] = allocatedService{doc: prev.doc, svc: svc, plan: p}
		}
	}
	// The edits and new services, one by one, against what the others hold.
	for i, d := range services {
		switch {
		case incumbent[i] && held[i]:
			out[i].doc, out[i].svc = d, d.object().(*v1.Service) // the same content
			continue
		case forced[i] != nil:
			if held[i] {
				problems = append(problems, d.problem("%v; serving its last valid version", forced[i]))
			} else {
				problems = append(problems, d.problem("%v", forced[i]))
			}
			continue
		}
		owner := d.key.Namespace + "/" + d.key.Name
		if held[i] {
			alloc.release(owner)
		}
		svc := d.object().(*v1.Service)
		p, err := alloc.planService(svc)
		if err == nil {
			err = alloc.reserve(svc, p)
		}
		if err == nil {
			out[i] = allocatedService{doc: d, svc: svc, plan: p}
			continue
		}
		// Refused: what it held is free again, as only it could hold it.
		if held[i] && alloc.reserve(out[i].svc, out[i].plan) == nil {
			problems = append(problems, d.problem("%v; serving its last valid version", err))
			continue
		}
		out[i] = allocatedService{}
		problems = append(problems, d.problem("%v", err))
	}
	for i, d := range services {
		e := &out[i]
		if e.plan == nil {
			continue
		}
		a, err := alloc.allocate(e.svc, e.plan)
		if err == nil {
			e.alloc = a
			continue
		}
		if held[i] && e.doc == d && !incumbent[i] {
			return nil, nil, i, err
		}
		*e = allocatedService{}
		problems = append(problems, d.problem("%v", err))
	}
	return out, problems, 0, nil
}

// incumbent reports whether d is what the last load served for its key: the same document, or
// one with the same content (a file re-read because another document in it changed).
func (l *loader) incumbent(d *document) bool {
	prev, ok := l.served[d.key]
	return ok && (prev.doc == d || equality.Semantic.DeepEqual(prev.doc.obj, d.obj))
}

// generatedSlices are the EndpointSlices made for a service from its pods at the last load; they
// are reused while the service, its pods and their nodes are the same objects.
type generatedSlices struct {
	svc    *v1.Service
	pods   []*v1.Pod
	nodes  []*v1.Node
	slices []*discoveryv1.EndpointSlice
}

// podIndex finds the pods a selector matches without testing every pod for every service.
type podIndex map[podLabel][]*v1.Pod

type podLabel struct{ namespace, key, value string }

func (ix podIndex) add(p *v1.Pod) {
	for k, v := range p.Labels {
		l := podLabel{p.Namespace, k, v}
		ix[l] = append(ix[l], p)
	}
}

// selected returns the pods of namespace ns that selector matches, in the order they were added.
func (ix podIndex) selected(ns string, selector map[string]string) []*v1.Pod {
	var fewest []*v1.Pod
	first := true
	for k, v := range selector {
		c := ix[podLabel{ns, k, v}]
		if first || len(c) < len(fewest) {
			fewest, first = c, false
		}
	}
	var out []*v1.Pod
	for _, p := range fewest {
		if selects(selector, p.Labels) {
			out = append(out, p)
		}
	}
	return out
}

// servedService is a service as the last load served it.
type servedService struct {
	doc   *document
	alloc allocation
	obj   *v1.Service
}

// objectKey returns the key of one of the core objects.
func objectKey(obj runtime.Object) Key {
	switch o := obj.(type) {
	case *v1.Service:
		return Key{GroupKind: serviceKind, Namespace: o.Namespace, Name: o.Name}
	case *discoveryv1.EndpointSlice:
		return Key{GroupKind: endpointSliceKind, Namespace: o.Namespace, Name: o.Name}
	case *v1.Node:
		return Key{GroupKind: nodeKind, Name: o.Name}
	case *v1.Pod:
		return Key{GroupKind: podKind, Namespace: o.Namespace, Name: o.Name}
	}
	return Key{}
}

// defaultService applies the API server's defaults to a service (a copy).
func defaultService(svc *v1.Service) {
	spec := &svc.Spec
	if spec.Type == "" {
		spec.Type = v1.ServiceTypeClusterIP
	}
	if spec.SessionAffinity == "" {
		spec.SessionAffinity = v1.ServiceAffinityNone
	}
	if spec.SessionAffinity == v1.ServiceAffinityNone {
		spec.SessionAffinityConfig = nil
	} else {
		if spec.SessionAffinityConfig == nil {
			spec.SessionAffinityConfig = &v1.SessionAffinityConfig{}
		}
		if spec.SessionAffinityConfig.ClientIP == nil {
			spec.SessionAffinityConfig.ClientIP = &v1.ClientIPConfig{}
		}
		if spec.SessionAffinityConfig.ClientIP.TimeoutSeconds == nil {
			spec.SessionAffinityConfig.ClientIP.TimeoutSeconds = ptr(v1.DefaultClientIPServiceAffinitySeconds)
		}
	}
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if p.Protocol == "" {
			p.Protocol = v1.ProtocolTCP
		}
		if p.TargetPort.IntVal == 0 && p.TargetPort.StrVal == "" {
			p.TargetPort.Type, p.TargetPort.IntVal = 0, p.Port
		}
	}
	if spec.ExternalTrafficPolicy == "" && externallyAccessible(svc) {
		spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyCluster
	}
	if spec.InternalTrafficPolicy == nil && spec.Type != v1.ServiceTypeExternalName {
		spec.InternalTrafficPolicy = ptr(v1.ServiceInternalTrafficPolicyCluster)
	}
	if spec.Type == v1.ServiceTypeLoadBalancer && spec.AllocateLoadBalancerNodePorts == nil {
		spec.AllocateLoadBalancerNodePorts = ptr(true)
	}
}

// defaultEndpointSlice applies the API server's defaults to the ports of a slice (copying it only
// when something changes).
func defaultEndpointSlice(es *discoveryv1.EndpointSlice) *discoveryv1.EndpointSlice {
	needs := slices.ContainsFunc(es.Ports, func(p discoveryv1.EndpointPort) bool { return p.Name == nil || p.Protocol == nil })
	if !needs {
		return es
	}
	es = es.DeepCopy()
	for i := range es.Ports {
		if es.Ports[i].Name == nil {
			es.Ports[i].Name = ptr("")
		}
		if es.Ports[i].Protocol == nil {
			es.Ports[i].Protocol = ptr(v1.ProtocolTCP)
		}
	}
	return es
}
