// Package lb decides, without any I/O, what a MetalLB deployment would decide: which pool address
// each LoadBalancer Service gets (Assign), and which node answers ARP/NDP for each of those
// addresses (PlanL2). Every agent computes the same answers from the same objects, so several
// nodes agree without talking to each other.
//
// The package also defines MetalLB's own API types (metallb.io/v1beta1 and v1beta2) as plain Go
// structs with the same JSON field names as MetalLB's CRDs, so MetalLB manifests decode verbatim.
package lb

import (
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupName is MetalLB's API group.
const GroupName = "metallb.io"

var (
	// GroupVersion is metallb.io/v1beta1: IPAddressPool, L2Advertisement, BGPAdvertisement,
	// Community, ServiceL2Status, BFDProfile.
	GroupVersion = schema.GroupVersion{Group: GroupName, Version: "v1beta1"}
	// GroupVersionV1beta2 is metallb.io/v1beta2: BGPPeer.
	GroupVersionV1beta2 = schema.GroupVersion{Group: GroupName, Version: "v1beta2"}

	// SchemeBuilder registers every MetalLB type this package defines.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)
	// AddToScheme adds the MetalLB types to a scheme, for client-go REST clients and informers.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(s *runtime.Scheme) error {
	s.AddKnownTypes(GroupVersion,
		&IPAddressPool{}, &IPAddressPoolList{},
		&L2Advertisement{}, &L2AdvertisementList{},
		&BGPAdvertisement{}, &BGPAdvertisementList{},
		&Community{}, &CommunityList{},
		&ServiceL2Status{}, &ServiceL2StatusList{},
		&BFDProfile{}, &BFDProfileList{},
	)
	s.AddKnownTypes(GroupVersionV1beta2, &BGPPeer{}, &BGPPeerList{})
	metav1.AddToGroupVersion(s, GroupVersion)
	metav1.AddToGroupVersion(s, GroupVersionV1beta2)
	return nil
}

// IPAddressPool is a set of addresses LoadBalancer Services may get (metallb.io/v1beta1).
type IPAddressPool struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   IPAddressPoolSpec   `json:"spec"`
	Status IPAddressPoolStatus `json:"status,omitempty"`
}

// IPAddressPoolSpec is the desired state of an IPAddressPool.
type IPAddressPoolSpec struct {
	// Addresses are CIDR prefixes ("10.0.0.0/24") or inclusive ranges ("10.0.0.51-10.0.0.80"),
	// IPv4 or IPv6.
	Addresses []string `json:"addresses"`
	// AutoAssign lets services that ask for no pool and no address get one from this pool
	// (default true).
	AutoAssign *bool `json:"autoAssign,omitempty"`
	// AvoidBuggyIPs leaves out IPv4 addresses ending in .0 and .255.
	AvoidBuggyIPs bool `json:"avoidBuggyIPs,omitempty"`
	// AllocateTo restricts which services may use the pool and orders pools.
	AllocateTo *ServiceAllocation `json:"serviceAllocation,omitempty"`
}

// ServiceAllocation restricts a pool to some services and gives it a priority.
type ServiceAllocation struct {
	// Priority orders pools: a lower number is preferred; 0 (unset) comes after every set priority.
	Priority int `json:"priority,omitempty"`
	// Namespaces and NamespaceSelectors list the namespaces whose services may use the pool (a
	// service matches when its namespace is listed or matches any selector).
	Namespaces         []string               `json:"namespaces,omitempty"`
	NamespaceSelectors []metav1.LabelSelector `json:"namespaceSelectors,omitempty"`
	// ServiceSelectors select the services that may use the pool (any selector matching suffices).
	ServiceSelectors []metav1.LabelSelector `json:"serviceSelectors,omitempty"`
}

// IPAddressPoolStatus is the observed state of an IPAddressPool (MetalLB's counters).
type IPAddressPoolStatus struct {
	AssignedIPv4  int64 `json:"assignedIPv4,omitempty"`
	AssignedIPv6  int64 `json:"assignedIPv6,omitempty"`
	AvailableIPv4 int64 `json:"availableIPv4,omitempty"`
	AvailableIPv6 int64 `json:"availableIPv6,omitempty"`
}

// IPAddressPoolList is a list of IPAddressPools.
type IPAddressPoolList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []IPAddressPool `json:"items"`
}

// L2Advertisement says which pools are announced over ARP/NDP, from which nodes and on which
// interfaces (metallb.io/v1beta1).
type L2Advertisement struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   L2AdvertisementSpec   `json:"spec,omitempty"`
	Status L2AdvertisementStatus `json:"status,omitempty"`
}

// L2AdvertisementSpec is the desired state of an L2Advertisement.
type L2AdvertisementSpec struct {
	// IPAddressPools names pools to announce; with IPAddressPoolSelectors, both empty means every pool.
	IPAddressPools         []string               `json:"ipAddressPools,omitempty"`
	IPAddressPoolSelectors []metav1.LabelSelector `json:"ipAddressPoolSelectors,omitempty"`
	// NodeSelectors select the nodes that may announce; empty means every node.
	NodeSelectors []metav1.LabelSelector `json:"nodeSelectors,omitempty"`
	// Interfaces restricts announcements to these interfaces; empty means every usable interface.
	Interfaces []string `json:"interfaces,omitempty"`
}

// L2AdvertisementStatus is the observed state of an L2Advertisement (empty in MetalLB too).
type L2AdvertisementStatus struct{}

// L2AdvertisementList is a list of L2Advertisements.
type L2AdvertisementList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []L2Advertisement `json:"items"`
}

// BGPAdvertisement says which pools are announced over BGP, how and to which peers
// (metallb.io/v1beta1).
type BGPAdvertisement struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BGPAdvertisementSpec   `json:"spec,omitempty"`
	Status BGPAdvertisementStatus `json:"status,omitempty"`
}

// BGPAdvertisementSpec is the desired state of a BGPAdvertisement.
type BGPAdvertisementSpec struct {
	// AggregationLength and AggregationLengthV6 roll the host routes up into prefixes of this length
	// (defaults 32 and 128: no aggregation).
	AggregationLength   *int32 `json:"aggregationLength,omitempty"`
	AggregationLengthV6 *int32 `json:"aggregationLengthV6,omitempty"`
	// LocalPref is the BGP LOCAL_PREF attribute (iBGP only).
	LocalPref uint32 `json:"localPref,omitempty"`
	// Communities are "AA:NN" values, large communities "large:AA:BB:CC", or names of Community aliases.
	Communities []string `json:"communities,omitempty"`
	// IPAddressPools and IPAddressPoolSelectors select the pools; both empty means every pool.
	IPAddressPools         []string               `json:"ipAddressPools,omitempty"`
	IPAddressPoolSelectors []metav1.LabelSelector `json:"ipAddressPoolSelectors,omitempty"`
	// NodeSelectors select the nodes that advertise; empty means every node.
	NodeSelectors []metav1.LabelSelector `json:"nodeSelectors,omitempty"`
	// Peers names the BGPPeers to advertise to; empty means every peer.
	Peers []string `json:"peers,omitempty"`
}

// BGPAdvertisementStatus is the observed state of a BGPAdvertisement (empty in MetalLB too).
type BGPAdvertisementStatus struct{}

// BGPAdvertisementList is a list of BGPAdvertisements.
type BGPAdvertisementList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPAdvertisement `json:"items"`
}

// Community names BGP community values so advertisements can use the names (metallb.io/v1beta1).
type Community struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   CommunitySpec   `json:"spec,omitempty"`
	Status CommunityStatus `json:"status,omitempty"`
}

// CommunitySpec is the desired state of a Community.
type CommunitySpec struct {
	Communities []CommunityAlias `json:"communities,omitempty"`
}

// CommunityAlias is one named community value.
type CommunityAlias struct {
	Name  string `json:"name,omitempty"`
	Value string `json:"value,omitempty"`
}

// CommunityStatus is the observed state of a Community (empty in MetalLB too).
type CommunityStatus struct{}

// CommunityList is a list of Communities.
type CommunityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Community `json:"items"`
}

// BGPPeer is a BGP router the nodes peer with (metallb.io/v1beta2).
type BGPPeer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BGPPeerSpec   `json:"spec,omitempty"`
	Status BGPPeerStatus `json:"status,omitempty"`
}

// DynamicASNMode lets a peer's AS number be learnt instead of configured.
type DynamicASNMode string

const (
	// InternalASNMode accepts only a peer in our own AS (iBGP).
	InternalASNMode DynamicASNMode = "internal"
	// ExternalASNMode accepts only a peer in another AS (eBGP).
	ExternalASNMode DynamicASNMode = "external"
)

// BGPPeerSpec is the desired state of a BGPPeer, with MetalLB's field names.
type BGPPeerSpec struct {
	MyASN                  uint32                 `json:"myASN"`
	ASN                    uint32                 `json:"peerASN,omitempty"`
	DynamicASN             DynamicASNMode         `json:"dynamicASN,omitempty"`
	Address                string                 `json:"peerAddress,omitempty"`
	Interface              string                 `json:"interface,omitempty"`
	SrcAddress             string                 `json:"sourceAddress,omitempty"`
	Port                   uint16                 `json:"peerPort,omitempty"`
	HoldTime               *metav1.Duration       `json:"holdTime,omitempty"`
	KeepaliveTime          *metav1.Duration       `json:"keepaliveTime,omitempty"`
	ConnectTime            *metav1.Duration       `json:"connectTime,omitempty"`
	RouterID               string                 `json:"routerID,omitempty"`
	NodeSelectors          []metav1.LabelSelector `json:"nodeSelectors,omitempty"`
	Password               string                 `json:"password,omitempty"`
	PasswordSecret         v1.SecretReference     `json:"passwordSecret,omitempty"`
	BFDProfile             string                 `json:"bfdProfile,omitempty"`
	EnableGracefulRestart  bool                   `json:"enableGracefulRestart,omitempty"`
	EBGPMultiHop           bool                   `json:"ebgpMultiHop,omitempty"`
	VRFName                string                 `json:"vrf,omitempty"`
	DisableMP              bool                   `json:"disableMP,omitempty"`
	DualStackAddressFamily bool                   `json:"dualStackAddressFamily,omitempty"`
}

// BGPPeerStatus is the observed state of a BGPPeer (empty in MetalLB too).
type BGPPeerStatus struct{}

// BGPPeerList is a list of BGPPeers.
type BGPPeerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BGPPeer `json:"items"`
}

// BFDProfile is a set of BFD timers BGPPeers name in bfdProfile (metallb.io/v1beta1). Intervals are
// milliseconds; unset fields take MetalLB's defaults (300 ms, 300 ms, multiplier 3).
type BFDProfile struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   BFDProfileSpec   `json:"spec,omitempty"`
	Status BFDProfileStatus `json:"status,omitempty"`
}

// BFDProfileSpec is a BFDProfile's settings, with MetalLB's field names.
type BFDProfileSpec struct {
	ReceiveInterval  *uint32 `json:"receiveInterval,omitempty"`
	TransmitInterval *uint32 `json:"transmitInterval,omitempty"`
	DetectMultiplier *uint32 `json:"detectMultiplier,omitempty"`
	EchoInterval     *uint32 `json:"echoInterval,omitempty"`
	EchoMode         *bool   `json:"echoMode,omitempty"`
	PassiveMode      *bool   `json:"passiveMode,omitempty"`
	MinimumTTL       *uint32 `json:"minimumTtl,omitempty"`
}

// BFDProfileStatus is the observed state of a BFDProfile (empty in MetalLB too).
type BFDProfileStatus struct{}

// BFDProfileList is a list of BFDProfiles.
type BFDProfileList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []BFDProfile `json:"items"`
}
