package iptables

import (
	"crypto/sha256"
	"encoding/base32"
	"fmt"

	"nodeagent/proxier"
)

// Tables this mode writes.
const (
	tableFilter = "filter"
	tableNAT    = "nat"
)

// Chain names. Every chain this mode creates starts with chainPrefix, so Cleanup can find them.
const (
	chainPrefix = "NA-"

	servicesChain         = "NA-SERVICES"          // nat: service VIPs to SVC/EXT/FW; filter: REJECT/DROP for cluster IPs
	externalServicesChain = "NA-EXTERNAL-SERVICES" // filter: REJECT/DROP for external destinations
	nodePortsChain        = "NA-NODEPORTS"         // nat: node ports to EXT; filter: health-check node ports
	postroutingChain      = "NA-POSTROUTING"       // nat: masquerade marked packets
	markMasqChain         = "NA-MARK-MASQ"         // nat: mark a packet for masquerade
	forwardChain          = "NA-FORWARD"           // filter: accept forwarded service traffic
	firewallChain         = "NA-PROXY-FIREWALL"    // filter: drop LB traffic not allowed by source ranges
	localnetFirewallChain = "NA-FIREWALL"          // filter: drop martian traffic to 127.0.0.0/8 (localhost node ports)

	svcPrefix = "NA-SVC-" // endpoints for Cluster traffic policy
	svlPrefix = "NA-SVL-" // endpoints for Local traffic policy
	extPrefix = "NA-EXT-" // external destinations: masquerade / short-circuit, then SVC or SVL
	fwPrefix  = "NA-FW-"  // loadBalancerSourceRanges
	sepPrefix = "NA-SEP-" // one endpoint: hairpin masquerade, affinity, DNAT

	// jumpCommentPrefix starts the comment of every jump rule this mode puts in a built-in chain.
	jumpCommentPrefix = "nodeagent "
)

// hashLen keeps "NA-SEP-" plus the hash well under the kernel's 28-character chain name limit.
const hashLen = 16

// chainHash is a stable, name-safe digest of a service port (and endpoint): the first hashLen
// characters of the base32 of its SHA-256, as kube-proxy names its chains.
func chainHash(n proxier.ServicePortName, endpoint string) string {
	s := n.String()
	if endpoint != "" {
		s += "|" + endpoint
	}
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:hashLen]
}

func serviceChain(prefix string, n proxier.ServicePortName) string {
	return prefix + chainHash(n, "")
}

func endpointChain(n proxier.ServicePortName, e proxier.Endpoint) string {
	return sepPrefix + chainHash(n, e.String())
}

// portName is the service port as kube-proxy prints it in comments: "namespace/name:port".
func portName(n proxier.ServicePortName) string {
	s := n.NamespacedName.String()
	if n.Port != "" {
		s += ":" + n.Port
	}
	return s
}

// chainID names a chain in a table.
type chainID struct {
	table string
	name  string
}

func (c chainID) String() string { return fmt.Sprintf("%s/%s", c.table, c.name) }

// jump is one rule in a built-in chain that sends packets into one of our chains.
type jump struct {
	table, from, to string
	comment         string
	extra           []string // matches before the comment
}

// spec is the rule as go-iptables takes it (no quoting).
func (j jump) spec() []string {
	return append(append([]string(nil), j.extra...), "-m", "comment", "--comment", j.comment, "-j", j.to)
}

// jumps are kube-proxy's jump rules, with our chains and comments.
var jumps = []jump{
	{tableFilter, "INPUT", externalServicesChain, "nodeagent externally-visible service portals", ctNew},
	{tableFilter, "FORWARD", externalServicesChain, "nodeagent externally-visible service portals", ctNew},
	{tableFilter, "INPUT", nodePortsChain, "nodeagent health check service ports", nil},
	{tableFilter, "FORWARD", servicesChain, "nodeagent service portals", ctNew},
	{tableFilter, "OUTPUT", servicesChain, "nodeagent service portals", ctNew},
	{tableFilter, "FORWARD", forwardChain, "nodeagent forwarding rules", nil},
	{tableFilter, "INPUT", firewallChain, "nodeagent load balancer firewall", ctNew},
	{tableFilter, "OUTPUT", firewallChain, "nodeagent load balancer firewall", ctNew},
	{tableFilter, "FORWARD", firewallChain, "nodeagent load balancer firewall", ctNew},
	{tableNAT, "OUTPUT", servicesChain, "nodeagent service portals", nil},
	{tableNAT, "PREROUTING", servicesChain, "nodeagent service portals", nil},
	{tableNAT, "POSTROUTING", postroutingChain, "nodeagent postrouting rules", nil},
	// kube-proxy's KUBE-FIREWALL jumps carry no comment; ours need one, Cleanup finds them by it.
	{tableFilter, "INPUT", localnetFirewallChain, "nodeagent localnet firewall", nil},
	{tableFilter, "OUTPUT", localnetFirewallChain, "nodeagent localnet firewall", nil},
}

var ctNew = []string{"-m", "conntrack", "--ctstate", "NEW"}
