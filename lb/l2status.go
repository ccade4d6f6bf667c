package lb

import (
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Labels MetalLB's speaker puts on a ServiceL2Status: the announcing node and the service.
const (
	LabelAnnounceNode     = "metallb.io/node"
	LabelServiceName      = "metallb.io/service-name"
	LabelServiceNamespace = "metallb.io/service-namespace"
)

// ServiceL2Status says which node answers ARP/NDP for a LoadBalancer service's addresses, and on
// which interfaces (metallb.io/v1beta1, written by the announcing node; MetalLB v0.14.8's kind).
type ServiceL2Status struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   ServiceL2StatusSpec `json:"spec,omitempty"`
	Status L2Status            `json:"status,omitempty"`
}

// ServiceL2StatusSpec is empty: the object is all status.
type ServiceL2StatusSpec struct{}

// L2Status is the observed layer-2 announcement of one service by one node.
type L2Status struct {
	// Node announces the service's addresses.
	Node string `json:"node,omitempty"`
	// ServiceName and ServiceNamespace name the service.
	ServiceName      string `json:"serviceName,omitempty"`
	ServiceNamespace string `json:"serviceNamespace,omitempty"`
	// Interfaces are where the node answers; empty means every usable interface.
	Interfaces []InterfaceInfo `json:"interfaces,omitempty"`
}

// InterfaceInfo names one network interface.
type InterfaceInfo struct {
	Name string `json:"name,omitempty"`
}

// ServiceL2StatusList is a list of ServiceL2Statuses.
type ServiceL2StatusList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ServiceL2Status `json:"items"`
}

// DeepCopy returns a deep copy of s.
func (s *ServiceL2Status) DeepCopy() *ServiceL2Status {
	if s == nil {
		return nil
	}
	out := *s
	s.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Status.Interfaces = slices.Clone(s.Status.Interfaces)
	return &out
}

// DeepCopyObject implements runtime.Object.
func (s *ServiceL2Status) DeepCopyObject() runtime.Object { return s.DeepCopy() }

// DeepCopyObject implements runtime.Object.
func (l *ServiceL2StatusList) DeepCopyObject() runtime.Object {
	out := *l
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	out.Items = make([]ServiceL2Status, len(l.Items))
	for i := range l.Items {
		out.Items[i] = *l.Items[i].DeepCopy()
	}
	return &out
}
