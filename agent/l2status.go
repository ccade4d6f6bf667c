package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/record"

	"nodeagent/lb"
	"nodeagent/metallb"
)

// serviceL2Statuses is the resource of MetalLB's ServiceL2Status (deploy/crds-status.yaml).
var serviceL2Statuses = lb.GroupVersion.WithResource("servicel2statuses")

// l2Status records, from this node, what it announces over layer 2, as MetalLB's speaker does: a
// Normal Event nodeAssigned ("announcing from node X with protocol layer2") on each service it
// starts announcing, and one ServiceL2Status per announced service in namespace (when the
// API server serves the kind), removed when the node stops announcing it.
type l2Status struct {
	node, namespace string
	dyn             dynamic.Interface
	disc            discovery.DiscoveryInterface // nil: the kind is taken as served
	events          record.EventRecorder
	log             *slog.Logger
	// resync is how often the objects are checked against the announcements without a change.
	resync time.Duration

	mu        sync.Mutex
	want      map[types.NamespacedName]metallb.L2Service
	announced map[types.NamespacedName]bool
	kick      chan struct{}
	unserved  bool // the kind was not served at the last look (logged once)
}

func newL2Status(node, namespace string, dyn dynamic.Interface, disc discovery.DiscoveryInterface, events record.EventRecorder, log *slog.Logger) *l2Status {
	return &l2Status{node: node, namespace: namespace, dyn: dyn, disc: disc, events: events, log: log,
		resync: time.Minute, want: map[types.NamespacedName]metallb.L2Service{},
		announced: map[types.NamespacedName]bool{}, kick: make(chan struct{}, 1)}
}

// set takes the services this node now announces (metallb.Options.Layer2Services); it does not
// block.
func (l *l2Status) set(svcs []metallb.L2Service) {
	l.mu.Lock()
	defer l.mu.Unlock()
	want := make(map[types.NamespacedName]metallb.L2Service, len(svcs))
	for _, s := range svcs {
		want[s.Service] = s
		if !l.announced[s.Service] {
			ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: s.Service.Namespace, Name: s.Service.Name, UID: s.UID}
			l.events.Eventf(ref, v1.EventTypeNormal, "nodeAssigned", "announcing from node %q with protocol %q", l.node, "layer2")
		}
	}
	l.announced = make(map[types.NamespacedName]bool, len(want))
	for k := range want {
		l.announced[k] = true
	}
	l.want = want
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// run keeps the ServiceL2Status objects in line with the announcements until ctx ends.
func (l *l2Status) run(ctx context.Context) {
	t := time.NewTicker(l.resync)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.kick:
		case <-t.C:
		}
		if err := l.reconcile(ctx); err != nil && ctx.Err() == nil {
			l.log.Warn("ServiceL2Status objects not in line; retrying", "err", err)
		}
	}
}

// statusName is the name of the ServiceL2Status of svc announced by node: fixed, so that a retried
// create cannot make a second object (MetalLB lets the server generate "l2-" names).
func statusName(node string, svc types.NamespacedName) string {
	h := sha256.Sum256([]byte(node + "/" + svc.Namespace + "/" + svc.Name))
	return "l2-" + hex.EncodeToString(h[:8])
}

// desiredStatus is what svc's ServiceL2Status says.
func (l *l2Status) desiredStatus(s metallb.L2Service) lb.L2Status {
	st := lb.L2Status{Node: l.node, ServiceName: s.Service.Name, ServiceNamespace: s.Service.Namespace}
	for _, i := range s.Interfaces {
		st.Interfaces = append(st.Interfaces, lb.InterfaceInfo{Name: i})
	}
	return st
}

// served reports whether the API server serves ServiceL2Status.
func (l *l2Status) served() bool {
	if l.disc == nil {
		return true
	}
	list, err := l.disc.ServerResourcesForGroupVersion(lb.GroupVersion.String())
	ok := err == nil && slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == serviceL2Statuses.Resource })
	if !ok && !l.unserved {
		l.log.Info("ServiceL2Status not served by the API server (deploy/crds-status.yaml); not written")
	}
	l.unserved = !ok
	return ok
}

// reconcile makes this node's ServiceL2Status objects match the announcements: one per announced
// service with its status, none for the others.
func (l *l2Status) reconcile(ctx context.Context) error {
	l.mu.Lock()
	want := make(map[types.NamespacedName]metallb.L2Service, len(l.want))
	for k, v := range l.want {
		want[k] = v
	}
	l.mu.Unlock()
	if !l.served() {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	res := l.dyn.Resource(serviceL2Statuses).Namespace(l.namespace)
	list, err := res.List(ctx, metav1.ListOptions{LabelSelector: lb.LabelAnnounceNode + "=" + l.node})
	if err != nil {
		return fmt.Errorf("list ServiceL2Status: %w", err)
	}
	var errs []error
	have := map[types.NamespacedName]*lb.ServiceL2Status{}
	for i := range list.Items {
		var obj lb.ServiceL2Status
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(list.Items[i].Object, &obj); err != nil {
			continue
		}
		k := types.NamespacedName{Namespace: obj.Labels[lb.LabelServiceNamespace], Name: obj.Labels[lb.LabelServiceName]}
		if _, wanted := want[k]; !wanted || have[k] != nil || obj.Name != statusName(l.node, k) {
			if err := res.Delete(ctx, obj.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("delete ServiceL2Status %s: %w", obj.Name, err))
			}
			continue
		}
		have[k] = &obj
	}
	for k, s := range want {
		desired := l.desiredStatus(s)
		cur := have[k]
		if cur == nil {
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": lb.GroupVersion.String(), "kind": "ServiceL2Status",
				"metadata": map[string]any{"name": statusName(l.node, k), "namespace": l.namespace,
					"labels": map[string]any{lb.LabelAnnounceNode: l.node, lb.LabelServiceName: k.Name, lb.LabelServiceNamespace: k.Namespace}},
			}}
			if _, err := res.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				errs = append(errs, fmt.Errorf("create ServiceL2Status of %s: %w", k, err))
				continue
			}
		} else if equalL2Status(cur.Status, desired) {
			continue
		}
		var ifs any // null clears a list an earlier version had
		if len(desired.Interfaces) > 0 {
			ifs = desired.Interfaces
		}
		patch, err := json.Marshal(map[string]any{"status": map[string]any{"node": desired.Node,
			"serviceName": desired.ServiceName, "serviceNamespace": desired.ServiceNamespace, "interfaces": ifs}})
		if err != nil {
			continue
		}
		if _, err := res.Patch(ctx, statusName(l.node, k), types.MergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
			errs = append(errs, fmt.Errorf("write ServiceL2Status of %s: %w", k, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d of %d writes failed, first: %w", len(errs), len(want), errs[0])
	}
	return nil
}

func equalL2Status(a, b lb.L2Status) bool {
	return a.Node == b.Node && a.ServiceName == b.ServiceName && a.ServiceNamespace == b.ServiceNamespace &&
		slices.Equal(a.Interfaces, b.Interfaces)
}
