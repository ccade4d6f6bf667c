// Package member keeps the view of which agents are alive, with hashicorp/memberlist as MetalLB's
// speakers do, so that a dead node's load-balancer addresses move to another node in about a second.
package member

import (
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Options configure a member.
type Options struct {
	// Name is this node's name, as other agents will see it.
	Name string
	// Bind is the address and port memberlist listens on (TCP and UDP), e.g. 10.0.0.151:7946.
	Bind netip.AddrPort
	// Join lists addresses (host or host:port) of other agents; this node's own may be among them.
	Join []string
	// Secret encrypts and authenticates gossip (16, 24 or 32 bytes, or any string hashed to 32
	// bytes): without it any host that reaches Bind can join and change who owns which address.
	Secret []byte
	// Insecure lets Start run without a Secret. Without it, an empty Secret is an error.
	Insecure bool
	// OnChange is called, without locks held, whenever a node joins, leaves or dies.
	OnChange func()
	Log      *slog.Logger
	// RejoinInterval is how often the Join addresses not seen alive are contacted again
	// (default 10 s).
	RejoinInterval time.Duration
}

// defaultRejoin is RejoinInterval's default. memberlist gossips to a node it declared dead for
// 30 s only (GossipToTheDeadTime): after a longer partition neither side ever contacts the other
// again and both keep announcing the load-balancer addresses they own. MetalLB's speakers join
// the speakers they do not see again, in the same way.
const defaultRejoin = 10 * time.Second

// ErrNoSecret is Start's answer to Options without a Secret that do not say Insecure.
var ErrNoSecret = errors.New("memberlist needs a secret unless it is run insecure on purpose")

// Members is the live membership view.
type Members struct {
	ml       *memberlist.Memberlist
	onChange func()
	log      *slog.Logger
	mu       sync.Mutex
	changes  int
	stopped  bool
	kick     chan struct{}
	done     chan struct{} // closed by Leave

	// meta is this node's metadata (SetMeta), gossiped to the others with its liveness.
	metaMu sync.Mutex
	meta   []byte
	// metas are the members' metadata, copied when memberlist tells of a join or an update
	// (under its lock: the Nodes Members returns are changed in place).
	metas  map[string][]byte
	update chan struct{} // SetMeta → the goroutine that re-advertises this node
}

// MetaLimit is the most metadata a member may carry (memberlist's MetaMaxSize).
const MetaLimit = memberlist.MetaMaxSize

// Start joins the cluster. Joining fails softly: a node that finds nobody runs alone and others
// join it later.
func Start(o Options) (*Members, error) {
	if len(o.Secret) == 0 && !o.Insecure {
		return nil, ErrNoSecret
	}
	m := &Members{onChange: o.OnChange, log: o.Log, kick: make(chan struct{}, 1), done: make(chan struct{}),
		update: make(chan struct{}, 1), metas: map[string][]byte{}}
	if m.log == nil {
		m.log = slog.Default()
	}
	c := memberlist.DefaultLANConfig()
	c.Name = o.Name
	c.BindAddr = o.Bind.Addr().String()
	c.BindPort = int(o.Bind.Port())
	c.AdvertiseAddr, c.AdvertisePort = c.BindAddr, c.BindPort
	// Detect a dead node in about a second (memberlist's LAN defaults take 5 s or more).
	c.ProbeInterval = 200 * time.Millisecond
	c.ProbeTimeout = 150 * time.Millisecond
	c.SuspicionMult = 2
	c.SuspicionMaxTimeoutMult = 2
	c.GossipInterval = 100 * time.Millisecond
	c.PushPullInterval = 5 * time.Second
	c.Events = m
	c.Delegate = m
	c.Logger = log.New(io.Discard, "", 0)
	if len(o.Secret) > 0 {
		c.SecretKey = secretKey(o.Secret)
	}
	ml, err := memberlist.Create(c)
	if err != nil {
		return nil, fmt.Errorf("memberlist on %s: %w", o.Bind, err)
	}
	m.ml = ml
	go m.notify()
	go m.advertise()
	var peers []string
	for _, j := range o.Join {
		if _, _, err := net.SplitHostPort(j); err != nil {
			j = net.JoinHostPort(j, strconv.Itoa(int(o.Bind.Port())))
		}
		if j != o.Bind.String() {
			peers = append(peers, j)
		}
	}
	if len(peers) > 0 {
		if n, err := ml.Join(peers); err != nil {
			m.log.Warn("memberlist join found nobody yet; others will join this node", "peers", peers, "err", err)
		} else {
			m.log.Info("memberlist joined", "contacted", n)
		}
		every := o.RejoinInterval
		if every <= 0 {
			every = defaultRejoin
		}
		go m.rejoin(peers, every)
	}
	return m, nil
}

// rejoin contacts, every interval until Leave, the peers that are not alive members.
func (m *Members) rejoin(peers []string, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		missing := notAlive(peers, m.ml.Members())
		if len(missing) == 0 {
			continue
		}
		if n, err := m.ml.Join(missing); err == nil {
			m.log.Debug("memberlist rejoined", "peers", missing, "contacted", n)
		}
	}
}

// notAlive returns the peers (host:port) that are not the address of an alive member.
func notAlive(peers []string, members []*memberlist.Node) []string {
	alive := map[string]bool{}
	for _, n := range members {
		if n.State == memberlist.StateAlive {
			alive[n.Address()] = true
		}
	}
	var out []string
	for _, p := range peers {
		if !alive[p] {
			out = append(out, p)
		}
	}
	return out
}

// secretKey turns a user's secret into a valid AES key: used as is when it has a valid length,
// else hashed to 32 bytes.
func secretKey(s []byte) []byte {
	switch len(s) {
	case 16, 24, 32:
		return s
	}
	return sha256Sum(s)
}

// Alive returns the names of the alive members, this node included, sorted.
func (m *Members) Alive() []string { return aliveNames(m.ml.Members()) }

// aliveNames names the members that count as alive: every one not dead or left, suspected ones
// included, as MetalLB's speaker counts them. A member turns suspect and back without any
// NotifyJoin or NotifyLeave; leaving suspects out would change the view with no event to replan
// on, so two agents would keep deciding from different memberships.
func aliveNames(nodes []*memberlist.Node) []string {
	var out []string
	for _, n := range nodes {
		if n.State != memberlist.StateDead && n.State != memberlist.StateLeft {
			out = append(out, n.Name)
		}
	}
	slices.Sort(out)
	return out
}

// Changes counts the membership changes seen, for metrics.
func (m *Members) Changes() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changes
}

// Leave tells the others this node is going away, then stops.
func (m *Members) Leave(timeout time.Duration) {
	_ = m.ml.Leave(timeout)
	_ = m.ml.Shutdown()
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.stopped {
		m.stopped = true
		close(m.kick)
		close(m.done)
	}
}

func (m *Members) changed(what string, n *memberlist.Node) {
	m.log.Info("member "+what, "node", n.Name, "addr", n.Address())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.changes++
	if m.stopped {
		return
	}
	// memberlist calls its delegate with its node lock held, and OnChange reads the membership
	// (Alive takes that lock): hand the news to another goroutine, merged with any pending one.
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

func (m *Members) notify() {
	for range m.kick {
		if m.onChange != nil {
			m.onChange()
		}
	}
}

// NotifyJoin implements memberlist.EventDelegate.
func (m *Members) NotifyJoin(n *memberlist.Node) {
	m.keepMeta(n, false)
	m.changed("joined", n)
}

// NotifyLeave implements memberlist.EventDelegate (left or died).
func (m *Members) NotifyLeave(n *memberlist.Node) {
	m.keepMeta(n, true)
	m.changed("left", n)
}

// NotifyUpdate implements memberlist.EventDelegate: n's metadata changed.
func (m *Members) NotifyUpdate(n *memberlist.Node) { m.keepMeta(n, false) }

// SetMeta replaces this node's metadata (at most MetaLimit bytes; longer is an error) and
// re-advertises the node, so that the others see it within a gossip round or two. It does not
// block.
func (m *Members) SetMeta(b []byte) error {
	if len(b) > MetaLimit {
		return fmt.Errorf("member metadata of %d bytes, the limit is %d", len(b), MetaLimit)
	}
	m.metaMu.Lock()
	m.meta = slices.Clone(b)
	m.metaMu.Unlock()
	select {
	case m.update <- struct{}{}:
	default:
	}
	return nil
}

// advertise re-advertises this node after each SetMeta, until Leave. UpdateNode waits for the
// broadcast to go out, so it runs here rather than in SetMeta's caller.
func (m *Members) advertise() {
	for {
		select {
		case <-m.done:
			return
		case <-m.update:
		}
		if err := m.ml.UpdateNode(time.Second); err != nil {
			m.log.Debug("memberlist metadata update", "err", err)
		}
	}
}

// Metas returns the metadata of every alive member by name. The bytes come from other hosts:
// the caller checks them.
func (m *Members) Metas() map[string][]byte {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	out := make(map[string][]byte, len(m.metas))
	for k, v := range m.metas {
		out[k] = slices.Clone(v)
	}
	return out
}

// keepMeta records n's metadata (gone: n left or died).
func (m *Members) keepMeta(n *memberlist.Node, gone bool) {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	if gone {
		delete(m.metas, n.Name)
	} else {
		m.metas[n.Name] = slices.Clone(n.Meta)
	}
}

// NodeMeta implements memberlist.Delegate.
func (m *Members) NodeMeta(limit int) []byte {
	m.metaMu.Lock()
	defer m.metaMu.Unlock()
	if len(m.meta) > limit {
		return nil
	}
	return slices.Clone(m.meta)
}

// NotifyMsg implements memberlist.Delegate: no user messages are sent.
func (m *Members) NotifyMsg([]byte) {}

// GetBroadcasts implements memberlist.Delegate: nothing to broadcast besides the metadata.
func (m *Members) GetBroadcasts(int, int) [][]byte { return nil }

// LocalState implements memberlist.Delegate: no state is exchanged in push/pull.
func (m *Members) LocalState(bool) []byte { return nil }

// MergeRemoteState implements memberlist.Delegate.
func (m *Members) MergeRemoteState([]byte, bool) {}
