package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"

	"nodeagent/lb"
	"nodeagent/metallb"
)

// statusWriter writes load-balancer addresses into Services' status when this agent leads: in API
// mode every agent computes the same assignment, and one of them (a Lease) records it.
type statusWriter struct {
	client kubernetes.Interface
	log    *slog.Logger
	leader atomic.Bool
	events record.EventRecorder
	// forbidden is set once a write was refused for lack of permission (logged once).
	forbidden atomic.Bool
}

// newStatusWriter returns a statusWriter whose Events are recorded as component "nodeagent" from
// node.
func newStatusWriter(ctx context.Context, client kubernetes.Interface, node string, log *slog.Logger) *statusWriter {
	b := record.NewBroadcaster(record.WithContext(ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return &statusWriter{client: client, log: log,
		events: b.NewRecorder(scheme.Scheme, v1.EventSource{Component: "nodeagent", Host: node})}
}

// problem records a Warning Event that explains why obj got no address, if this agent is the
// leader, with the reason MetalLB's controller records: AllocationFailed, or LoadBalancerFailed
// for requested addresses it cannot use.
func (w *statusWriter) problem(obj v1.ObjectReference, p lb.Problem) {
	if !w.leader.Load() {
		return
	}
	switch {
	case p.Event == lb.EventLoadBalancerFailed:
		w.events.Eventf(&obj, v1.EventTypeWarning, p.Event, "invalid requested loadbalancer IPs: %s", p.Reason)
	case obj.Kind == "Service":
		w.events.Eventf(&obj, v1.EventTypeWarning, "AllocationFailed", "Failed to allocate IP for %q: %s", obj.Namespace+"/"+obj.Name, p.Reason)
	default:
		w.events.Event(&obj, v1.EventTypeWarning, "InvalidConfiguration", p.Reason)
	}
}

// frontendConflict records a Warning Event FrontendConflict on a Service that lost a frontend (an
// address, port or node port) to another Service, if this agent is the leader: every agent finds
// the same conflicts, and one Event says it.
func (w *statusWriter) frontendConflict(svc v1.ObjectReference, reason string) {
	if !w.leader.Load() {
		return
	}
	w.events.Event(&svc, v1.EventTypeWarning, "FrontendConflict", reason)
}

// write records st if this agent is the leader: status.loadBalancer.ingress (status
// subresource), then the ip-allocated-from-pool annotation under both of MetalLB's spellings, each
// only over the version st was decided from (a newer one, another controller's write say, comes
// with a decision of its own); and an Event IPAllocated, as MetalLB's controller records, when
// addresses were assigned.
func (w *statusWriter) write(st metallb.Status) {
	if !w.leader.Load() {
		return
	}
	svc := st.Service
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	services := w.client.CoreV1().Services(svc.Namespace)
	rv := st.ResourceVersion
	if st.IngressChanged {
		ingress := st.Ingress
		if ingress == nil {
			ingress = []v1.LoadBalancerIngress{}
		}
		patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": rv},
			"status": map[string]any{"loadBalancer": map[string]any{"ingress": ingress}}})
		if err != nil {
			return
		}
		out, err := services.Patch(ctx, svc.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
		if err != nil {
			w.writeFailed("write load-balancer status", svc, err)
			return
		}
		rv = out.ResourceVersion
		w.log.Info("load-balancer status written", "service", svc.String(), "ingress", ingressIPs(ingress))
		if len(st.Ingress) > 0 {
			ref := &v1.ObjectReference{Kind: "Service", APIVersion: "v1", Namespace: svc.Namespace, Name: svc.Name, UID: st.UID}
			w.events.Eventf(ref, v1.EventTypeNormal, "IPAllocated", "Assigned IP %q", ingressIPs(st.Ingress))
		}
	}
	if st.PoolAnnotated {
		return
	}
	var pool any // null removes the annotation
	if st.Pool != "" {
		pool = st.Pool
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"resourceVersion": rv,
		"annotations": map[string]any{lb.AnnotationAllocatedFromPool: pool, lb.AnnotationAllocatedFromPoolLegacy: pool}}})
	if err != nil {
		return
	}
	if _, err := services.Patch(ctx, svc.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		w.writeFailed("annotate load-balancer pool", svc, err)
	}
}

// writeFailed logs a failed write. A conflict is expected (the service changed meanwhile; its
// new version brings a new decision); a refusal for lack of permission is logged once.
func (w *statusWriter) writeFailed(what string, svc types.NamespacedName, err error) {
	switch {
	case apierrors.IsConflict(err), apierrors.IsNotFound(err):
		w.log.Debug(what+": the service changed meanwhile", "service", svc.String(), "err", err)
	case apierrors.IsForbidden(err):
		if w.forbidden.CompareAndSwap(false, true) {
			w.log.Error(what+": forbidden; see deploy/rbac.yaml", "service", svc.String(), "err", err)
		}
	default:
		w.log.Error(what, "service", svc.String(), "err", err)
	}
}

func ingressIPs(ing []v1.LoadBalancerIngress) []string {
	var out []string
	for _, i := range ing {
		out = append(out, i.IP)
	}
	return out
}

// lead runs leader election on the Lease namespace/name until ctx ends; onLead runs each time
// this agent becomes the leader.
func (w *statusWriter) lead(ctx context.Context, namespace, name, identity string, onLead func()) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Namespace: namespace, Name: name},
		Client:     w.client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity},
	}
	for ctx.Err() == nil {
		leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
			Lock:            lock,
			ReleaseOnCancel: true,
			LeaseDuration:   15 * time.Second,
			RenewDeadline:   10 * time.Second,
			RetryPeriod:     2 * time.Second,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(context.Context) {
					w.leader.Store(true)
					w.log.Info("leading load-balancer status writes", "lease", namespace+"/"+name)
					onLead()
				},
				OnStoppedLeading: func() {
					w.leader.Store(false)
					w.log.Info("no longer leading load-balancer status writes")
				},
			},
		})
	}
}
