package config

import (
	"encoding/json"
	"os"
	"testing"
)

// FuzzConfigFile decodes arbitrary config files: decoding never panics, and whatever is
// accepted encodes back into a file that is accepted again with the same meaning.
func FuzzConfigFile(f *testing.F) {
	if b, err := os.ReadFile("../../examples/kube-proxy-config.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(kubeadmConfig))
	f.Add([]byte("mode: iptables\nclusterCIDR: 10.244.0.0/16\niptables:\n  masqueradeAll: true\n  syncPeriod: 10s\n"))
	f.Add([]byte("memberlistBind: 10.0.0.151\nmemberlistJoin: [10.0.0.152, 10.0.0.153]\nmemberlistSecretFile: /etc/secret\n"))
	f.Add([]byte("memberlistSecrett: x\n"))
	f.Add([]byte("a: &a [*a]\n"))
	f.Add([]byte("{\"mode\": \"ipvs\", \"ipvs\": {\"scheduler\": \"lc\", \"tcpTimeout\": \"15m\"}}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := Default()
		if err := Decode(b, &c); err != nil {
			return
		}
		c.ApplyModeBlock(nil)
		again, err := json.Marshal(&c)
		if err != nil {
			t.Fatalf("encode accepted config: %v", err)
		}
		d := Default()
		if err := Decode(again, &d); err != nil {
			t.Fatalf("accepted %q, but not its encoding %s: %v", b, again, err)
		}
		d.ApplyModeBlock(nil)
		if d.Mode != c.Mode || d.MemberlistSecret != c.MemberlistSecret || d.MemberlistSecretFile != c.MemberlistSecretFile ||
			d.MemberlistInsecure != c.MemberlistInsecure || d.SyncPeriod != c.SyncPeriod || d.MasqueradeAll != c.MasqueradeAll {
			t.Fatalf("%q and its encoding %s differ", b, again)
		}
	})
}
