// Package vagrant holds the provisioning of the Vagrant lab (../Vagrantfile); its test checks the
// Vagrantfile with Vagrant itself, since the VMs need a hypervisor that CI does not have.
package vagrant

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	if _, err := exec.LookPath("vagrant"); err != nil {
		t.Skip("vagrant not installed (scripts/deps.sh installs it)")
	}
	// A scratch copy, so that Vagrant's .vagrant/ state never lands in the repository.
	dir := t.TempDir()
	for _, f := range []string{"../Vagrantfile", "provision.sh"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Base(f))
		if f == "provision.sh" {
			dst = filepath.Join(dir, "vagrant", f)
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	out, err := validate(dir).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "validated successfully") {
		t.Fatalf("vagrant validate: %v\n%s", err, out)
	}

	// A broken Vagrantfile must fail, or the check above proves nothing.
	if err := os.WriteFile(filepath.Join(dir, "Vagrantfile"), []byte("Vagrant.configure(\"2\") do |c|\n  c.vm.nonsense = 1\nend\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := validate(dir).CombinedOutput(); err == nil {
		t.Fatalf("vagrant validate accepted a broken Vagrantfile:\n%s", out)
	}
}

// validate runs vagrant validate on the Vagrantfile in dir, with Vagrant's own state kept there too.
func validate(dir string) *exec.Cmd {
	cmd := exec.Command("vagrant", "validate", "--ignore-provider")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "VAGRANT_HOME="+filepath.Join(dir, ".vagrant.d"), "VAGRANT_CHECKPOINT_DISABLE=1")
	return cmd
}

// TestAddressPlan checks that the VMs sit at the lab's addresses (DESIGN.md), which the seed
// manifests and examples/ assume.
func TestAddressPlan(t *testing.T) {
	b, err := os.ReadFile("../Vagrantfile")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"node01" => "10.0.0.151"`, `"node02" => "10.0.0.152"`, `"node03" => "10.0.0.153"`, `ROUTER = "10.0.0.254"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("Vagrantfile lacks %s", want)
		}
	}
	if !regexp.MustCompile(`config\.vm\.box = "debian/bookworm64"`).Match(b) {
		t.Error("Vagrantfile does not use the Debian 12 box")
	}
	if out, err := exec.Command("bash", "-n", "provision.sh").CombinedOutput(); err != nil {
		t.Errorf("provision.sh: %v\n%s", err, out)
	}
}
