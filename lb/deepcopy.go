package lb

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Hand-written deep copies: the types are few and small, and writing them out keeps the package
// free of generated code. Every copy below copies every reference field.

func copySelectors(in []metav1.LabelSelector) []metav1.LabelSelector {
	if in == nil {
		return nil
	}
	out := make([]metav1.LabelSelector, len(in))
	for i := range in {
		in[i].DeepCopyInto(&out[i])
	}
	return out
}

func copyDuration(d *metav1.Duration) *metav1.Duration {
	if d == nil {
		return nil
	}
	c := *d
	return &c
}

// DeepCopyInto copies s into out.
func (s *IPAddressPoolSpec) DeepCopyInto(out *IPAddressPoolSpec) {
	*out = *s
	out.Addresses = slices.Clone(s.Addresses)
	if s.AutoAssign != nil {
		b := *s.AutoAssign
		out.AutoAssign = &b
	}
	if s.AllocateTo != nil {
		a := *s.AllocateTo
		a.Namespaces = slices.Clone(s.AllocateTo.Namespaces)
		a.NamespaceSelectors = copySelectors(s.AllocateTo.NamespaceSelectors)
		a.ServiceSelectors = copySelectors(s.AllocateTo.ServiceSelectors)
		out.AllocateTo = &a
	}
}

// DeepCopy returns a deep copy of p.
func (p *IPAddressPool) DeepCopy() *IPAddressPool {
	if p == nil {
		return nil
	}
	out := &IPAddressPool{TypeMeta: p.TypeMeta, Status: p.Status}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	p.Spec.DeepCopyInto(&out.Spec)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *IPAddressPool) DeepCopyObject() runtime.Object { return p.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *IPAddressPoolList) DeepCopyObject() runtime.Object {
	out := &IPAddressPoolList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]IPAddressPool, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}

// DeepCopyInto copies s into out.
func (s *L2AdvertisementSpec) DeepCopyInto(out *L2AdvertisementSpec) {
	out.IPAddressPools = slices.Clone(s.IPAddressPools)
	out.IPAddressPoolSelectors = copySelectors(s.IPAddressPoolSelectors)
	out.NodeSelectors = copySelectors(s.NodeSelectors)
	out.Interfaces = slices.Clone(s.Interfaces)
}

// DeepCopy returns a deep copy of a.
func (a *L2Advertisement) DeepCopy() *L2Advertisement {
	if a == nil {
		return nil
	}
	out := &L2Advertisement{TypeMeta: a.TypeMeta}
	a.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	a.Spec.DeepCopyInto(&out.Spec)
	return out
}

// DeepCopyObject implements runtime.Object.
func (a *L2Advertisement) DeepCopyObject() runtime.Object { return a.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *L2AdvertisementList) DeepCopyObject() runtime.Object {
	out := &L2AdvertisementList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]L2Advertisement, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}

// DeepCopyInto copies s into out.
func (s *BGPAdvertisementSpec) DeepCopyInto(out *BGPAdvertisementSpec) {
	*out = *s
	if s.AggregationLength != nil {
		v := *s.AggregationLength
		out.AggregationLength = &v
	}
	if s.AggregationLengthV6 != nil {
		v := *s.AggregationLengthV6
		out.AggregationLengthV6 = &v
	}
	out.Communities = slices.Clone(s.Communities)
	out.IPAddressPools = slices.Clone(s.IPAddressPools)
	out.IPAddressPoolSelectors = copySelectors(s.IPAddressPoolSelectors)
	out.NodeSelectors = copySelectors(s.NodeSelectors)
	out.Peers = slices.Clone(s.Peers)
}

// DeepCopy returns a deep copy of a.
func (a *BGPAdvertisement) DeepCopy() *BGPAdvertisement {
	if a == nil {
		return nil
	}
	out := &BGPAdvertisement{TypeMeta: a.TypeMeta}
	a.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	a.Spec.DeepCopyInto(&out.Spec)
	return out
}

// DeepCopyObject implements runtime.Object.
func (a *BGPAdvertisement) DeepCopyObject() runtime.Object { return a.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *BGPAdvertisementList) DeepCopyObject() runtime.Object {
	out := &BGPAdvertisementList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]BGPAdvertisement, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}

// DeepCopy returns a deep copy of c.
func (c *Community) DeepCopy() *Community {
	if c == nil {
		return nil
	}
	out := &Community{TypeMeta: c.TypeMeta}
	c.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.Communities = slices.Clone(c.Spec.Communities)
	return out
}

// DeepCopyObject implements runtime.Object.
func (c *Community) DeepCopyObject() runtime.Object { return c.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *CommunityList) DeepCopyObject() runtime.Object {
	out := &CommunityList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]Community, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}

// DeepCopyInto copies s into out.
func (s *BGPPeerSpec) DeepCopyInto(out *BGPPeerSpec) {
	*out = *s
	out.HoldTime = copyDuration(s.HoldTime)
	out.KeepaliveTime = copyDuration(s.KeepaliveTime)
	out.ConnectTime = copyDuration(s.ConnectTime)
	out.NodeSelectors = copySelectors(s.NodeSelectors)
}

// DeepCopy returns a deep copy of p.
func (p *BGPPeer) DeepCopy() *BGPPeer {
	if p == nil {
		return nil
	}
	out := &BGPPeer{TypeMeta: p.TypeMeta}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	p.Spec.DeepCopyInto(&out.Spec)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *BGPPeer) DeepCopyObject() runtime.Object { return p.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *BGPPeerList) DeepCopyObject() runtime.Object {
	out := &BGPPeerList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]BGPPeer, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}

func copyPtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	c := *p
	return &c
}

// DeepCopy returns a deep copy of p.
func (p *BFDProfile) DeepCopy() *BFDProfile {
	if p == nil {
		return nil
	}
	out := &BFDProfile{TypeMeta: p.TypeMeta}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	s := p.Spec
	out.Spec = BFDProfileSpec{ReceiveInterval: copyPtr(s.ReceiveInterval), TransmitInterval: copyPtr(s.TransmitInterval),
		DetectMultiplier: copyPtr(s.DetectMultiplier), EchoInterval: copyPtr(s.EchoInterval), EchoMode: copyPtr(s.EchoMode),
		PassiveMode: copyPtr(s.PassiveMode), MinimumTTL: copyPtr(s.MinimumTTL)}
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *BFDProfile) DeepCopyObject() runtime.Object { return p.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *BFDProfileList) DeepCopyObject() runtime.Object {
	out := &BFDProfileList{TypeMeta: l.TypeMeta}
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]BFDProfile, len(l.Items))
		for i := range l.Items {
			out.Items[i] = *l.Items[i].DeepCopy()
		}
	}
	return out
}
