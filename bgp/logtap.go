package bgp

import (
	"context"
	"log/slog"
)

// notificationTap wraps the handler GoBGP logs through to learn about NOTIFICATIONs it sends while
// opening a session. GoBGP v4 negotiates outgoing connections outside its FSM, so an OPEN that is
// refused (wrong peer ASN, a peer that closes on us) produces no peer event — only its "sent
// notification" log record with Code and Subcode attributes. Matching on that record is the one
// way to turn such a failure into a clear error; if GoBGP renames it, the session still reports
// the failure through the not-established warning.
type notificationTap struct {
	next   slog.Handler
	notify func(code, subcode uint8)
}

// notificationMessage is the message of GoBGP's log record for a NOTIFICATION it sent.
const notificationMessage = "sent notification"

// Enabled lets Info records through even when the wrapped handler is quieter, so the tap sees them.
func (h notificationTap) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

// Handle reports notification records and forwards what the wrapped handler wants.
func (h notificationTap) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == notificationMessage {
		var code, sub int64
		found := 0
		r.Attrs(func(a slog.Attr) bool {
			v, ok := intValue(a.Value)
			switch {
			case !ok:
			case a.Key == "Code":
				code, found = v, found+1
			case a.Key == "Subcode":
				sub, found = v, found+1
			}
			return true
		})
		if found == 2 {
			h.notify(uint8(code), uint8(sub))
		}
	}
	if !h.next.Enabled(ctx, r.Level) {
		return nil
	}
	return h.next.Handle(ctx, r)
}

// WithAttrs keeps the tap on derived loggers.
func (h notificationTap) WithAttrs(attrs []slog.Attr) slog.Handler {
	return notificationTap{next: h.next.WithAttrs(attrs), notify: h.notify}
}

// WithGroup keeps the tap on derived loggers.
func (h notificationTap) WithGroup(name string) slog.Handler {
	return notificationTap{next: h.next.WithGroup(name), notify: h.notify}
}

// intValue reads an integer attribute of any integer kind; Value.Int64 panics on other kinds,
// and a panic in a log handler would take the agent down with GoBGP's goroutine.
func intValue(v slog.Value) (int64, bool) {
	switch v.Kind() {
	case slog.KindInt64:
		return v.Int64(), true
	case slog.KindUint64:
		return int64(min(v.Uint64(), 1<<62)), true
	}
	return 0, false
}
