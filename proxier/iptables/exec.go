package iptables

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"

	goiptables "github.com/coreos/go-iptables/iptables"

	"nodeagent/proxier"
)

// Exec runs the bulk commands of one family: iptables-save / iptables-restore and their ip6tables
// twins. Tests swap it to record the restore input or to run the commands in a lab namespace.
type Exec interface {
	// Run runs the command name with args, feeding it stdin, and copies its standard output to
	// stdout (nil: discarded; iptables-restore's output is never needed, and can be the whole
	// table, see restoreInput.listAll).
	Run(ctx context.Context, name string, args []string, stdin []byte, stdout io.Writer) error
}

// CommandExec runs commands with os/exec, each behind Prefix: empty for the agent's own network
// namespace, or for instance ip netns exec NAME to target a lab namespace.
type CommandExec struct {
	Prefix []string
}

var _ Exec = CommandExec{}

// Run implements Exec.
func (c CommandExec) Run(ctx context.Context, name string, args []string, stdin []byte, stdout io.Writer) error {
	argv := append(append(append([]string(nil), c.Prefix...), name), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Rules is single-rule access to one family's built-in chains, for removing jump rules into
// ours (inserting them goes through iptables-restore). go-iptables' *iptables.IPTables satisfies it.
type Rules interface {
	// Delete removes the first rule of the chain that matches rulespec exactly.
	Delete(table, chain string, rulespec ...string) error
	// HasRandomFully reports whether MASQUERADE takes --random-fully.
	HasRandomFully() bool
	// GetIptablesVersion returns the binary's version (iptables-restore takes --wait from 1.6.2).
	GetIptablesVersion() (int, int, int)
}

var _ Rules = (*goiptables.IPTables)(nil)

// GoIPTables returns go-iptables for family f using the binary at path (empty: iptables or
// ip6tables from PATH). It fails when the binary is missing, which is how New detects the
// families this host can program.
func GoIPTables(f proxier.Family, path string) (Rules, error) {
	proto := goiptables.ProtocolIPv4
	if f == proxier.IPv6 {
		proto = goiptables.ProtocolIPv6
	}
	var ipt *goiptables.IPTables
	var err error
	if path != "" {
		ipt, err = goiptables.New(goiptables.IPFamily(proto), goiptables.Timeout(5), goiptables.Path(path))
	} else {
		ipt, err = goiptables.New(goiptables.IPFamily(proto), goiptables.Timeout(5))
	}
	if err != nil {
		return nil, fmt.Errorf("%s iptables binary: %w", f, err)
	}
	return ipt, nil
}

// binary returns the name of family f's variant of the iptables command cmd ("-save", "-restore").
func binary(f proxier.Family, suffix string) string {
	if f == proxier.IPv6 {
		return "ip6tables" + suffix
	}
	return "iptables" + suffix
}
