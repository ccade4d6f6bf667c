package cluster

import (
	"strings"
	"testing"
)

func TestParseMounts(t *testing.T) {
	mounts := `/dev/vda / ext4 rw,relatime 0 0
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/net_cls,net_prio cgroup rw,nosuid,nodev,noexec,relatime,net_cls,net_prio 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
`
	hs, err := parseMounts(strings.NewReader(mounts))
	if err != nil {
		t.Fatal(err)
	}
	want := []hierarchy{
		{"/sys/fs/cgroup/cpu", "cgroup", "cpu"},
		{"/sys/fs/cgroup/net_cls,net_prio", "cgroup", "net_cls,net_prio"},
		{"/sys/fs/cgroup/systemd", "cgroup", "xattr,none,name=systemd"},
		{"/sys/fs/cgroup/unified", "cgroup2", ""},
	}
	if len(hs) != len(want) {
		t.Fatalf("parseMounts = %+v", hs)
	}
	for i := range want {
		if hs[i] != want[i] {
			t.Errorf("hierarchy %d = %+v, want %+v", i, hs[i], want[i])
		}
	}
	script := mountScript(hs)
	for _, line := range []string{
		"mount -t cgroup -o cpu cgroup /sys/fs/cgroup/cpu",
		"mount -t cgroup -o xattr,none,name=systemd cgroup /sys/fs/cgroup/systemd",
		"mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified",
	} {
		if !strings.Contains(script, line+"\n") {
			t.Errorf("mount script lacks %q:\n%s", line, script)
		}
	}
}
