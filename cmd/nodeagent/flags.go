package main

import (
	"flag"
	"strings"

	"nodeagent/agent/config"
	"nodeagent/proxier"
	"nodeagent/proxier/ipvs"
)

// listVar binds a comma-separated list flag to p.
func listVar(fs *flag.FlagSet, p *[]string, name, usage string) {
	fs.Func(name, usage, func(s string) error {
		*p = splitList(s)
		return nil
	})
}

// commonFlags binds the flags every subcommand that reads inputs shares. Flag names are kube-proxy's.
func commonFlags(fs *flag.FlagSet, c *config.Config) {
	fs.StringVar(&c.Mode, "proxy-mode", c.Mode, "which proxy mode to use: iptables, nftables or ipvs")
	fs.StringVar(&c.HostnameOverride, "hostname-override", c.HostnameOverride, "the name of this node (default: the hostname)")
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "the pod CIDRs, comma-separated; traffic from outside them to cluster IPs is masqueraded")
	listVar(fs, &c.NodePortAddresses, "nodeport-addresses", "comma-separated CIDRs (or \"primary\") of the local addresses that answer node ports (default: all)")
	fs.BoolVar(&c.MasqueradeAll, "masquerade-all", c.MasqueradeAll, "SNAT all traffic sent via service cluster IPs")
	fs.IntVar(&c.MasqueradeBit, "iptables-masquerade-bit", c.MasqueradeBit, "the bit of the fwmark space that marks packets needing SNAT, in [0, 31]")
	fs.BoolVar(&c.LocalhostNodePorts, "iptables-localhost-nodeports", c.LocalhostNodePorts, "iptables mode, IPv4: node ports answer on 127.0.0.1 too (sets route_localnet)")
	fs.StringVar(&c.DetectLocalMode, "detect-local-mode", c.DetectLocalMode, "how pod traffic is told from other traffic: ClusterCIDR, NodeCIDR, BridgeInterface or InterfaceNamePrefix (default ClusterCIDR when --cluster-cidr is given)")
	fs.StringVar(&c.DetectLocal.BridgeInterface, "pod-bridge-interface", c.DetectLocal.BridgeInterface, "the pods' bridge, for --detect-local-mode BridgeInterface")
	fs.StringVar(&c.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", c.DetectLocal.InterfaceNamePrefix, "the prefix of pod interfaces, for --detect-local-mode InterfaceNamePrefix")
	fs.StringVar(&c.Manifests, "manifests", c.Manifests, "directory of Kubernetes manifests (YAML/JSON) to serve instead of an API server")
	fs.StringVar(&c.ClientConnection.Kubeconfig, "kubeconfig", c.ClientConnection.Kubeconfig, "path to a kubeconfig file to watch a Kubernetes API server")
	fs.StringVar(&c.ServiceClusterIPRange, "service-cluster-ip-range", c.ServiceClusterIPRange, "CIDRs (comma-separated, one per family) the manifests source allocates cluster IPs from")
	fs.StringVar(&c.ServiceNodePortRange, "service-node-port-range", c.ServiceNodePortRange, "port range the manifests source allocates node ports from")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LBClass, "lb-class", c.LBClass, "the spec.loadBalancerClass served, alone: services without a class are then not served (MetalLB's --lb-class)")
	fs.Func("layer2-exclude-interfaces", "comma-separated regular expressions of interface names layer 2 never answers on (MetalLB's announcedInterfacesToExclude; default: MetalLB's list, docker, CNI, veth and other virtual links; empty: none)", func(s string) error {
		list := splitList(s)
		c.Layer2ExcludeInterfaces = &list
		return nil
	})
	fs.BoolVar(&c.LBAllocation, "lb-allocation", c.LBAllocation, "assign load-balancer addresses from IPAddressPools and announce them; false leaves status.loadBalancer.ingress to another controller (a cloud's) and only proxies")
	ipvsFlags(fs, c)
}

// parseWithConfig parses args into c: defaults, then the --config file, then explicit flags.
func parseWithConfig(fs *flag.FlagSet, args []string, c *config.Config) error {
	var configPath string
	// Only --config matters in the first pass; unknown flags are the real parse's business.
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--config" || a == "-config":
			if i+1 < len(args) {
				configPath = args[i+1]
			}
		case strings.HasPrefix(a, "--config=") || strings.HasPrefix(a, "-config="):
			configPath = a[strings.Index(a, "=")+1:]
		}
	}
	if configPath != "" {
		if err := config.LoadFile(configPath, c); err != nil {
			return err
		}
	}
	fs.String("config", configPath, "a kube-proxy style configuration file (KubeProxyConfiguration YAML); flags given too override it")
	commonFlags(fs, c)
	if err := fs.Parse(args); err != nil {
		return err
	}
	c.UserAgent = "nodeagent/" + version
	c.ApplyModeBlock(explicitFlags(fs))
	return nil
}

// explicitFlags returns the names of the flags given on the command line.
func explicitFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

// ipvsFlags binds kube-proxy's --ipvs-* flags to c.IPVS, which already holds the config file's
// ipvs: block, so that a flag given overrides the file. --ipvs-sync-period and
// --ipvs-min-sync-period are kube-proxy's mode-specific spellings of --sync-period and
// --min-sync-period and exist where those do (run).
func ipvsFlags(fs *flag.FlagSet, c *config.Config) {
	fs.StringVar(&c.IPVS.Scheduler, "ipvs-scheduler", c.IPVS.Scheduler,
		"IPVS scheduler of services whose annotation "+proxier.AnnotationIPVSScheduler+" names none: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh, ... (default rr)")
	fs.BoolVar(&c.IPVS.StrictARP, "ipvs-strict-arp", c.IPVS.StrictARP,
		"set arp_ignore=1 and arp_announce=2 so the node never answers ARP for service addresses on "+ipvs.DummyInterface+" (needed with MetalLB's layer 2)")
	fs.DurationVar(&c.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", c.IPVS.TCPTimeout.Duration,
		"IPVS timeout of idle established TCP connections (0: leave the kernel's)")
	fs.DurationVar(&c.IPVS.TCPFinTimeo.Duration, "ipvs-tcpfin-timeout", c.IPVS.TCPFinTimeo.Duration,
		"IPVS timeout of TCP connections after a FIN (0: leave the kernel's)")
	fs.DurationVar(&c.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", c.IPVS.UDPTimeout.Duration,
		"IPVS timeout of UDP flows (0: leave the kernel's)")
	if fs.Lookup("sync-period") != nil {
		fs.DurationVar(&c.SyncPeriod, "ipvs-sync-period", c.SyncPeriod, "same as --sync-period")
	}
	if fs.Lookup("min-sync-period") != nil {
		fs.DurationVar(&c.MinSyncPeriod, "ipvs-min-sync-period", c.MinSyncPeriod, "same as --min-sync-period")
	}
}

// runFlags binds the flags only run has.
func runFlags(fs *flag.FlagSet, c *config.Config, kp *kubeProxyCLI) {
	fs.DurationVar(&c.SyncPeriod, "sync-period", c.SyncPeriod, "how often rules are fully resynced and checked for drift")
	fs.DurationVar(&c.MinSyncPeriod, "min-sync-period", c.MinSyncPeriod, "least time between two syncs (0: a change is applied as soon as the previous sync ends)")
	fs.StringVar(&c.HealthzBindAddress, "healthz-bind-address", c.HealthzBindAddress, "ip:port of the /healthz server (empty: off)")
	fs.StringVar(&c.MetricsBindAddress, "metrics-bind-address", c.MetricsBindAddress, "ip:port of the /metrics server (empty: off)")
	fs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "serve Go's /debug/pprof/ on the metrics address (kube-proxy's flag)")
	fs.StringVar(&c.MemberlistBind, "memberlist-bind", c.MemberlistBind, "ip[:port] for memberlist among agents (port 7946 by default); empty: no membership, every node the objects name counts as alive")
	listVar(fs, &c.MemberlistJoin, "memberlist-join", "comma-separated addresses of other agents' memberlist (this node's own may be among them)")
	fs.StringVar(&c.MemberlistSecret, "memberlist-secret", c.MemberlistSecret, "shared secret that encrypts and authenticates memberlist gossip; visible in /proc/<pid>/cmdline, prefer --memberlist-secret-file or $"+config.EnvMemberlistSecret)
	fs.StringVar(&c.MemberlistSecretFile, "memberlist-secret-file", c.MemberlistSecretFile, "file holding the memberlist secret (surrounding whitespace ignored); a directory means its file \"secretkey\", as MetalLB mounts its memberlist Secret")
	fs.BoolVar(&c.MemberlistInsecure, "memberlist-insecure", c.MemberlistInsecure, "run memberlist without a secret on purpose: any host that reaches the memberlist port can then join and take load-balancer addresses over")
	fs.BoolVar(&c.Layer2, "layer2", c.Layer2, "answer ARP/NDP for the load-balancer addresses this node owns (L2Advertisements)")
	fs.BoolVar(&c.AdvertiseClusterIP, "advertise-cluster-ip", c.AdvertiseClusterIP, "also advertise every service's cluster IPs over BGP, from nodes that may serve them (kube-router's flag)")
	fs.BoolVar(&c.AdvertiseExternalIP, "advertise-external-ip", c.AdvertiseExternalIP, "also advertise every service's externalIPs over BGP, by the load-balancer rules (kube-router's flag)")
	fs.DurationVar(&c.Layer2Refresh.Duration, "layer2-refresh-interval", c.Layer2Refresh.Duration, "re-send gratuitous ARP/NDP for every owned address this often (0: only when ownership changes)")
	fs.StringVar(&c.LeaderElectionNamespace, "leader-election-namespace", c.LeaderElectionNamespace, "namespace of the Lease that elects the agent writing load-balancer status (API mode), of ServiceL2Status objects, and of the basic-auth Secrets BGPPeer passwordSecret names")
	kubeProxyFlags(fs, c, kp)
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(s string) []string { return config.SplitList(s) }
