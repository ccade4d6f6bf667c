// Package vm runs commands on a kernel that has what the project's machines lack (IPVS, dummy
// interfaces) by booting Debian's kernel under qemu with this machine's own userland; the work is
// done by the vm/run script next to this file, which this package finds and describes.
//
// Tests that need such a kernel skip on the host and are run inside the VM with
//
//	vm/run -- go test ./proxier/ipvs/...
//
// Inside, the environment variable NODEAGENT_VM is "1".
package vm

import (
	"os"
	"path/filepath"
	"runtime"
)

// Inside reports whether this process runs inside a VM started by vm/run.
func Inside() bool { return os.Getenv("NODEAGENT_VM") == "1" }

// Script returns the path of vm/run in this source tree.
func Script() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "run")
}
