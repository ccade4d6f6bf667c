package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// decode reads conf over the defaults, as a command does with a --config file and no flags.
func decode(conf string) (Config, error) {
	c := Default()
	if err := Decode([]byte(conf), &c); err != nil {
		return c, err
	}
	c.ApplyModeBlock(nil)
	return c, nil
}

// A key neither nodeagent nor kube-proxy knows is an error — a misspelt memberlistSecret must not
// run gossip unencrypted — and so are keys given twice, keys in the wrong case, unknown keys
// inside a block, and another kind of object.
func TestConfigUnknownKeys(t *testing.T) {
	for conf, want := range map[string]string{
		"memberlistBind: 10.0.0.151\nmemberlistSecrett: s3cret\n": `unknown field "memberlistSecrett"`,
		"memberlistSecret: a\nmemberlistSecret: b\n":              `"memberlistSecret"`,
		"MemberlistSecret: s3cret\n":                              `"MemberlistSecret"`,
		"iptables:\n  masqueradeAl: true\n":                       `unknown field "iptables.masqueradeAl"`,
		"clientConnection:\n  kubeConfig: /etc/kubeconfig\n":      `"clientConnection.kubeConfig"`,
		"kind: KubeletConfiguration\n":                            `kind "KubeletConfiguration"`,
		"apiVersion: kubeproxy.config.k8s.io/v1beta1\n":           `apiVersion`,
		"- mode: iptables\n":                                      "cannot unmarshal array",
	} {
		_, err := decode(conf)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: error %v, want one with %s", conf, err, want)
		}
	}
}

// A kube-proxy configuration as kubeadm writes it (every key, most empty) loads: empty values
// mean kube-proxy's defaults (mode "" is iptables), and the kube-proxy settings nodeagent does
// not implement that are set are named for the log.
func TestConfigKubeadm(t *testing.T) {
	c, err := decode(kubeadmConfig)
	if err != nil {
		t.Fatal(err)
	}
	if c.Mode != "iptables" || c.HealthzBindAddress != "0.0.0.0:10256" || c.MetricsBindAddress != "127.0.0.1:10249" ||
		c.ClientConnection.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || c.ClusterCIDR != "10.244.0.0/16" {
		t.Errorf("got mode %q healthz %q metrics %q kubeconfig %q clusterCIDR %q", c.Mode, c.HealthzBindAddress,
			c.MetricsBindAddress, c.ClientConnection.Kubeconfig, c.ClusterCIDR)
	}
	if want := []string{"bindAddress"}; !slices.Equal(c.Ignored, want) {
		t.Errorf("ignored settings %v, want %v", c.Ignored, want)
	}
	if ct := c.ConntrackSettings(); ct.MaxPerCore == nil || *ct.MaxPerCore != 65536 || *ct.Min != 131072 || ct.TCPEstablishedTimeout.Duration != 24*time.Hour {
		t.Errorf("conntrack %+v: want the file's maxPerCore 65536 over kube-proxy's defaults", ct)
	}
	if len(c.FeatureGates) == 0 {
		t.Error("feature gates of the file were dropped")
	}
}

// kubeadmConfig is kubeadm v1.34's kube-proxy ConfigMap content, with a feature gate and a
// conntrack setting added.
const kubeadmConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: 65536
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
featureGates:
  SomeGate: true
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
kind: KubeProxyConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
    text:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
`
