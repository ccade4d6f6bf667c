// Package deploy holds the manifests that install nodeagent into a Kubernetes cluster: the
// ServiceAccount and the minimal ClusterRole it runs with (rbac.yaml), and the
// CustomResourceDefinitions of the MetalLB kinds it reads (crds.yaml). The files are the source
// of truth for `kubectl apply -f deploy/`; the package embeds them so that tests and tools apply
// exactly what users would.
package deploy

import _ "embed"

// RBAC is rbac.yaml: the nodeagent ServiceAccount in kube-system, the nodeagent ClusterRole and
// the ClusterRoleBinding between them, the Role (with its RoleBinding) in kube-system that
// lets the agent hold its leader-election Lease and no other, and the Role (with its RoleBinding)
// that lets it list and watch the Secrets of kube-system only, as multi-document YAML.
//
//go:embed rbac.yaml
var RBAC []byte

// CRDs is crds.yaml: CustomResourceDefinitions for MetalLB's IPAddressPool, L2Advertisement,
// BGPAdvertisement, BGPPeer, Community and BFDProfile (group metallb.io), as multi-document YAML.
//
//go:embed crds.yaml
var CRDs []byte

// StatusCRDs is crds-status.yaml: the CustomResourceDefinition of MetalLB's ServiceL2Status, the
// kind nodeagent writes (one object per announced service, by the announcing node).
//
//go:embed crds-status.yaml
var StatusCRDs []byte

// Names of the objects in RBAC, for code that binds other subjects to the same role or
// impersonates the agent.
const (
	// Namespace is where the ServiceAccount lives.
	Namespace = "kube-system"
	// ServiceAccount is the name of the agent's ServiceAccount.
	ServiceAccount = "nodeagent"
	// ClusterRole is the name of the agent's ClusterRole (and of its binding).
	ClusterRole = "nodeagent"
	// LeaderElectionRole is the name of the Role in Namespace (and of its binding) that grants the
	// agent its Lease.
	LeaderElectionRole = "nodeagent-leader-election"
	// SecretsRole is the name of the Role in Namespace (and of its binding) that lets the agent
	// list and watch the Secrets there, for BGPPeer passwordSecret: no other namespace's.
	SecretsRole = "nodeagent-secrets"
	// Lease is the name of the Lease that elects the agent writing load-balancer status; it lives
	// in Namespace, the agent's default --leader-election-namespace.
	Lease = "nodeagent-loadbalancer"
)
