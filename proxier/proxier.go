package proxier

import (
	"context"
	"io"
)

// Proxier programs a State into the kernel in one mode. Every mode package provides one.
type Proxier interface {
	// Sync makes the kernel match st. Changes lists the services that changed since the previous
	// call; a Proxier may rewrite only those, and must do a full rewrite when ch.Full is set, after
	// its own failed Sync, and when it detects that the kernel no longer holds what it last
	// programmed. A failed Sync leaves the previously programmed rules in place.
	Sync(ctx context.Context, st *State, ch Changes) error
	// Render writes what a full Sync of st would program, in the mode's own text form
	// (iptables-restore input, nft -f input, ipvsadm -Sn plus helpers), touching nothing.
	Render(w io.Writer, st *State) error
	// Cleanup removes every kernel object the mode ever created, and nothing else.
	Cleanup(ctx context.Context) error
}
