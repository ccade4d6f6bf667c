package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRun boots the VM once and checks everything a caller relies on: the command runs on
// Debian's kernel (not the host's) with IPVS, its stdout and stderr come back separately and in
// order with whatever the caller writes after it to the same file, its exit status is the tool's,
// and a --rw directory is written through to the host.
func TestRun(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (qemu, apt-get)")
	}
	if Inside() {
		t.Skip("already inside the VM: a VM under TCG inside TCG is too slow to be useful")
	}
	dir := t.TempDir()
	hostUname, err := exec.Command("uname", "-r").Output()
	if err != nil {
		t.Fatal(err)
	}
	inner := `cat /proc/net/ip_vs
uname -r
echo written >` + dir + `/result
test -w /tmp && test -w /run/netns && echo writable-tmp
echo to-stderr >&2
exit 3`
	// The outer shell appends after vm/run to the same file: the command's output must survive.
	outer := `{ "$0" --rw "$1" -- sh -c "$2"; echo "rc=$?"; } >"$1/out" 2>"$1/err"`
	start := time.Now()
	cmd := exec.Command("sh", "-c", outer, Script(), dir, inner)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("vm/run: %v\n%s", err, b)
	}
	t.Logf("VM round trip (cached kernel and initramfs after the first run): %v", time.Since(start))
	out, _ := os.ReadFile(filepath.Join(dir, "out"))
	errOut, _ := os.ReadFile(filepath.Join(dir, "err"))
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !strings.HasPrefix(lines[0], "IP Virtual Server version") {
		t.Errorf("no IPVS inside the VM; stdout:\n%s\nstderr:\n%s", out, errOut)
	}
	if len(lines) < 2 || !strings.Contains(string(out), "writable-tmp") {
		t.Errorf("stdout lacks the command's output:\n%s\nstderr:\n%s", out, errOut)
	}
	for _, l := range lines {
		if l == strings.TrimSpace(string(hostUname)) {
			t.Errorf("the command ran on the host's kernel %s", l)
		}
	}
	if last := lines[len(lines)-1]; last != "rc=3" {
		t.Errorf("last line of stdout %q, want rc=3 (exit status passed through, output kept)", last)
	}
	if !strings.Contains(string(errOut), "to-stderr") || strings.Contains(string(out), "to-stderr") {
		t.Errorf("stderr not kept apart: stdout:\n%s\nstderr:\n%s", out, errOut)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "result")); err != nil || string(b) != "written\n" {
		t.Errorf("--rw directory not written through: %q, %v", b, err)
	}
}
