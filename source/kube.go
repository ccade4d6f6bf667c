package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	v1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"nodeagent/object"
)

const (
	// proxyLabelSelector is kube-proxy's label selector for Services and EndpointSlices.
	proxyLabelSelector = "!" + object.LabelServiceProxyName + ",!" + v1.IsHeadlessService
)

// proxySelector is proxyLabelSelector parsed, to filter on the client side too (a fake
// clientset's watches do not filter by label).
var proxySelector = func() labels.Selector {
	a, _ := labels.NewRequirement(object.LabelServiceProxyName, selection.DoesNotExist, nil)
	b, _ := labels.NewRequirement(v1.IsHeadlessService, selection.DoesNotExist, nil)
	return labels.NewSelector().Add(*a, *b)
}()

// Kube serves Services, EndpointSlices, Nodes and Namespaces from a Kubernetes API server through
// client-go shared informers, filtered as kube-proxy filters them: objects labelled
// service.kubernetes.io/service-proxy-name (another proxy's) or service.kubernetes.io/headless
// are not delivered. Informers have no periodic resync: the sink sees real changes only.
type Kube struct {
	// Client is the API client.
	Client kubernetes.Interface
	// NodeName is this node's name. Set: every Node and Namespace is watched too (the sink picks
	// this node's Node out). Empty: neither is watched.
	NodeName string
	// Log receives informer problems; nil: slog.Default().
	Log *slog.Logger
	// Dynamic and Extra add kinds served by CustomResourceDefinitions (the MetalLB kinds): each
	// is watched when the API server serves it at start, and delivered as the typed object its
	// New returns. A kind the server does not serve is skipped with a log line.
	Dynamic dynamic.Interface
	Extra   []ExtraKind
	// Report, when set, is told about every object of an Extra kind that does not convert to its
	// Go type (a field of the wrong type that the installed CRD let through) and is therefore not
	// served, and about such an object becoming valid again or going away (Reason "resolved").
	// It is called from informer goroutines. Invalid objects are logged either way.
	Report func(Problem)
	// SecretNamespace, when set, also watches the kubernetes.io/basic-auth Secrets of that one
	// namespace (a field-selected informer, so no other Secret is listed or cached, and only
	// their "password" key is kept): BGPPeer.passwordSecret. A role that may not list them
	// there is logged and the Secrets are not watched.
	SecretNamespace string
}

// ExtraKind is a CRD-served kind the Kube source watches through the dynamic client.
type ExtraKind struct {
	Resource schema.GroupVersionResource
	New      func() runtime.Object
}

var _ Runner = (*Kube)(nil)

// Run starts the informers, delivers every event to sink and calls Synced once all caches have
// synced and every initial object has been delivered. Events before that are delivered as upserts
// too (the sink does not act before Synced). Run returns when ctx is done, after the informers
// stopped; it returns an error only when the caches cannot sync.
func (k *Kube) Run(ctx context.Context, sink Sink) error {
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	log = log.With("source", "kubernetes")
	if k.Client == nil {
		return errors.New("kubernetes source: no client")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Managed fields are large and useless to a proxy: drop them before they reach the cache.
	strip := informers.WithTransform(func(obj any) (any, error) {
		if m, err := meta.Accessor(obj); err == nil {
			m.SetManagedFields(nil)
		}
		return obj, nil
	})
	factory := informers.NewSharedInformerFactoryWithOptions(k.Client, 0, strip,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = proxyLabelSelector }))
	infs := []cache.SharedIndexInformer{
		factory.Core().V1().Services().Informer(),
		factory.Discovery().V1().EndpointSlices().Informer(),
	}
	filters := []func(metav1.Object) bool{proxied, proxied}
	factories := []informers.SharedInformerFactory{factory}
	if k.NodeName != "" {
		// Every Node and Namespace, unfiltered: MetalLB's decisions (nodeSelectors, the
		// exclude-from-external-load-balancers label, node conditions, namespaceSelectors) must be
		// taken from the same view on every node, as MetalLB's speakers watch every Node.
		all := informers.NewSharedInformerFactoryWithOptions(k.Client, 0, strip)
		every := func(metav1.Object) bool { return true }
		infs = append(infs, all.Core().V1().Nodes().Informer())
		filters = append(filters, every)
		// Namespaces only matter to namespaceSelectors: a role that may not list them must not
		// keep the caches from syncing.
		if _, err := k.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{Limit: 1}); apierrors.IsForbidden(err) {
			log.Warn("may not list namespaces; serviceAllocation.namespaceSelectors match no namespace", "err", err)
		} else {
			infs = append(infs, all.Core().V1().Namespaces().Informer())
			filters = append(filters, every)
		}
		factories = append(factories, all)
	}
	// ServiceCIDRs (networking.k8s.io/v1), as kube-proxy v1.34 watches them: the nftables mode
	// rejects traffic to their addresses that no Service holds.
	if k.serves(networkingv1.SchemeGroupVersion.WithResource("servicecidrs")) {
		cidrFactory := informers.NewSharedInformerFactoryWithOptions(k.Client, 0, strip)
		infs = append(infs, cidrFactory.Networking().V1().ServiceCIDRs().Informer())
		filters = append(filters, func(metav1.Object) bool { return true })
		factories = append(factories, cidrFactory)
	}

	if k.SecretNamespace != "" {
		if inf := k.secretInformer(ctx, log); inf != nil {
			infs = append(infs, inf.Informer())
			filters = append(filters, func(m metav1.Object) bool {
				sec, ok := m.(*v1.Secret)
				return ok && sec.Namespace == k.SecretNamespace && sec.Type == v1.SecretTypeBasicAuth
			})
			factories = append(factories, inf.Factory)
		}
	}

	var dynFactory dynamicinformer.DynamicSharedInformerFactory
	if k.Dynamic != nil && len(k.Extra) > 0 {
		dynFactory = dynamicinformer.NewDynamicSharedInformerFactory(k.Dynamic, 0)
		for _, x := range k.Extra {
			if !k.serves(x.Resource) {
				log.Info("kind not served by the API server; not watched", "resource", x.Resource.String())
				continue
			}
			inf := dynFactory.ForResource(x.Resource).Informer()
			if err := inf.SetTransform(typedFrom(x.New)); err != nil {
				return fmt.Errorf("kubernetes source: %s: %w", x.Resource, err)
			}
			infs = append(infs, inf)
			filters = append(filters, func(metav1.Object) bool { return true })
		}
	}

	var synced []cache.InformerSynced
	for i, inf := range infs {
		reg, err := inf.AddEventHandler(handler(sink, filters[i], log, k.Report))
		if err != nil {
			return fmt.Errorf("kubernetes source: add event handler: %w", err)
		}
		// The registration, not the informer, says when this handler has seen every initial
		// object; the informer's own HasSynced may come before the handler got them all.
		synced = append(synced, reg.HasSynced)
		_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			log.Warn("watch failed; retrying", "err", err)
		})
	}
	for _, f := range factories {
		f.Start(ctx.Done())
	}
	if dynFactory != nil {
		dynFactory.Start(ctx.Done())
	}
	defer func() {
		cancel()
		for _, f := range factories {
			f.Shutdown()
		}
		if dynFactory != nil {
			dynFactory.Shutdown()
		}
	}()

	start := time.Now()
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("kubernetes source: caches did not sync")
	}
	sink.Synced()
	log.Info("caches synced", "took", time.Since(start))
	<-ctx.Done()
	return nil
}

// secretInformer is the narrow Secret watch of SecretNamespace, or nil when the role may not list
// Secrets there.
func (k *Kube) secretInformer(ctx context.Context, log *slog.Logger) *secretWatch {
	sel := fields.OneTermEqualSelector("type", string(v1.SecretTypeBasicAuth)).String()
	_, err := k.Client.CoreV1().Secrets(k.SecretNamespace).List(ctx, metav1.ListOptions{FieldSelector: sel, Limit: 1})
	if apierrors.IsForbidden(err) {
		log.Warn("may not list basic-auth Secrets; BGPPeer passwordSecret is not resolved", "namespace", k.SecretNamespace, "err", err)
		return nil
	}
	f := informers.NewSharedInformerFactoryWithOptions(k.Client, 0, informers.WithNamespace(k.SecretNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sel }),
		informers.WithTransform(passwordOnly))
	return &secretWatch{Factory: f, SecretInformer: f.Core().V1().Secrets()}
}

// secretWatch is a Secret informer with its factory.
type secretWatch struct {
	Factory informers.SharedInformerFactory
	coreinformers.SecretInformer
}

// passwordOnly keeps of a Secret only what a BGPPeer reads (its type and "password" key), so the
// cache holds no other secret data; other types are emptied (a fake client ignores field
// selectors, and the sink ignores them).
func passwordOnly(obj any) (any, error) {
	sec, ok := obj.(*v1.Secret)
	if !ok {
		return obj, nil
	}
	out := &v1.Secret{TypeMeta: sec.TypeMeta, Type: sec.Type}
	out.Namespace, out.Name, out.UID, out.ResourceVersion = sec.Namespace, sec.Name, sec.UID, sec.ResourceVersion
	if pw, ok := sec.Data[v1.BasicAuthPasswordKey]; ok && sec.Type == v1.SecretTypeBasicAuth {
		out.Data = map[string][]byte{v1.BasicAuthPasswordKey: pw}
	}
	return out, nil
}

// serves reports whether the API server serves r (its CRD is installed).
func (k *Kube) serves(r schema.GroupVersionResource) bool {
	list, err := k.Client.Discovery().ServerResourcesForGroupVersion(r.GroupVersion().String())
	if err != nil {
		return false
	}
	for _, res := range list.APIResources {
		if res.Name == r.Resource {
			return true
		}
	}
	return false
}

// typedFrom converts the dynamic client's unstructured objects into typed ones before they are
// cached, so the sink sees the same types as from the manifests source. An object that does not
// convert (a BGPPeer with holdTime "ninety", which a loose CRD accepts) is cached as an *invalid
// rather than failing the transform: a failed transform fails the informer's whole list, and the
// caches would never sync because of one bad object.
func typedFrom(newObj func() runtime.Object) cache.TransformFunc {
	return func(obj any) (any, error) {
		u, ok := obj.(*unstructured.Unstructured)
		if !ok {
			return obj, nil
		}
		u.SetManagedFields(nil)
		typed := newObj()
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, typed); err != nil {
			return newInvalid(u, newObj(), err), nil
		}
		return typed, nil
	}
}

// invalid stands, in an informer's cache, for an object that does not convert to its Go type. It
// carries the object's identity (for the cache's keys and for deletes) and why it is invalid; it
// is never delivered to a Sink.
type invalid struct {
	metav1.TypeMeta
	metav1.ObjectMeta
	// stub is an object of the kind's Go type with only its identity set, delivered as a Delete
	// when the invalid object goes away (the sink may still serve an earlier valid version).
	stub   runtime.Object
	reason string
}

// newInvalid makes the stand-in for u, which failed to convert with err; stub is a new, empty
// object of the kind's Go type.
func newInvalid(u *unstructured.Unstructured, stub runtime.Object, err error) *invalid {
	if m, merr := meta.Accessor(stub); merr == nil {
		m.SetNamespace(u.GetNamespace())
		m.SetName(u.GetName())
		m.SetUID(u.GetUID())
	}
	stub.GetObjectKind().SetGroupVersionKind(u.GroupVersionKind())
	inv := &invalid{stub: stub, reason: oneLine(fmt.Sprintf("does not decode as a %s: %v", u.GetKind(), err))}
	inv.SetGroupVersionKind(u.GroupVersionKind())
	inv.Namespace, inv.Name, inv.UID, inv.ResourceVersion = u.GetNamespace(), u.GetName(), u.GetUID(), u.GetResourceVersion()
	return inv
}

// DeepCopyObject implements runtime.Object.
func (i *invalid) DeepCopyObject() runtime.Object {
	c := *i
	i.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	c.stub = i.stub.DeepCopyObject()
	return &c
}

func (i *invalid) problem(reason string) Problem {
	return Problem{Kind: i.Kind, Object: types.NamespacedName{Namespace: i.Namespace, Name: i.Name}, Reason: reason}
}

// proxied reports whether kube-proxy would see an object with m's labels.
func proxied(m metav1.Object) bool { return proxySelector.Matches(labels.Set(m.GetLabels())) }

// handler turns informer callbacks into sink calls. An update that makes an object leave the
// filter (a label added) is delivered as a delete, as a filtered watch would. Invalid objects
// (see typedFrom) are reported and not delivered: an invalid update leaves the last valid version
// served, as the manifests source does.
func handler(sink Sink, keep func(metav1.Object) bool, log *slog.Logger, report func(Problem)) cache.ResourceEventHandler {
	tell := func(p Problem, resolved bool) {
		if resolved {
			log.Info("invalid object resolved", "kind", p.Kind, "namespace", p.Object.Namespace, "name", p.Object.Name)
		} else {
			log.Warn("invalid object; not served", "kind", p.Kind, "namespace", p.Object.Namespace, "name", p.Object.Name, "reason", p.Reason)
		}
		if report != nil {
			report(p)
		}
	}
	accept := func(obj any) (runtime.Object, bool) {
		o, ok := obj.(runtime.Object)
		if !ok {
			log.Warn("informer delivered an unexpected object", "type", fmt.Sprintf("%T", obj))
			return nil, false
		}
		if _, bad := o.(*invalid); bad {
			return nil, false
		}
		m, err := meta.Accessor(o)
		if err != nil {
			return nil, false
		}
		return o, keep(m)
	}
	return cache.ResourceEventHandlerDetailedFuncs{
		AddFunc: func(obj any, _ bool) {
			if inv, bad := obj.(*invalid); bad {
				tell(inv.problem(inv.reason+"; not served"), false)
				return
			}
			if o, ok := accept(obj); ok {
				sink.Upsert(o)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			if inv, bad := newObj.(*invalid); bad {
				if old, wasBad := oldObj.(*invalid); wasBad && old.ResourceVersion == inv.ResourceVersion {
					return // a re-list: the same invalid version, reported already
				}
				reason := inv.reason + "; not served"
				if _, wasBad := oldObj.(*invalid); !wasBad {
					reason = inv.reason + "; serving its last valid version"
				}
				tell(inv.problem(reason), false)
				return
			}
			if inv, wasBad := oldObj.(*invalid); wasBad {
				tell(inv.problem("resolved"), true)
			}
			if o, ok := accept(newObj); ok {
				sink.Upsert(o)
			} else if o != nil {
				if _, had := accept(oldObj); had {
					sink.Delete(o)
				}
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				// The watch missed the delete; the tombstone holds the last state known.
				obj = t.Obj
			}
			if inv, bad := obj.(*invalid); bad {
				// An earlier valid version may still be served.
				tell(inv.problem("resolved"), true)
				sink.Delete(inv.stub)
				return
			}
			if o, ok := accept(obj); ok {
				sink.Delete(o)
			}
		},
	}
}
