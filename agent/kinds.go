package agent

import (
	v1 "k8s.io/api/core/v1"

	"nodeagent/lb"
	"nodeagent/source"
)

// The MetalLB kinds the manifests source reads, so the seed's metallb.yaml works verbatim; and
// Namespaces, whose labels serviceAllocation.namespaceSelectors of address pools match; and
// Secrets, for BGPPeer.passwordSecret (the speaker keeps only a basic-auth password of its own
// namespace and passes no Secret on).
func init() {
	source.Register[v1.Namespace]("v1", "Namespace", source.ClusterScoped, nil)
	source.Register[lb.IPAddressPool]("metallb.io/v1beta1", "IPAddressPool", source.Namespaced, lb.ValidateIPAddressPool)
	source.Register[lb.L2Advertisement]("metallb.io/v1beta1", "L2Advertisement", source.Namespaced, lb.ValidateL2Advertisement)
	source.Register[lb.BGPAdvertisement]("metallb.io/v1beta1", "BGPAdvertisement", source.Namespaced, lb.ValidateBGPAdvertisement)
	source.Register[lb.Community]("metallb.io/v1beta1", "Community", source.Namespaced, lb.ValidateCommunity)
	source.Register[lb.BGPPeer]("metallb.io/v1beta2", "BGPPeer", source.Namespaced, lb.ValidateBGPPeer)
	source.Register[lb.BFDProfile]("metallb.io/v1beta1", "BFDProfile", source.Namespaced, lb.ValidateBFDProfile)
	source.Register[v1.Secret]("v1", "Secret", source.Namespaced, nil)
}
