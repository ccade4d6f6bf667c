package proxier

import "time"

// Recorder receives the events behind kube-proxy's per-mode metrics (health.KubeProxy is one).
// Proxiers call it while they sync, so its methods must be cheap and must not block.
type Recorder interface {
	// RestoreFailed: an iptables-restore failed in family f (ipvs mode: an update of its helper
	// tables, which take the place of kube-proxy's iptables rules there).
	RestoreFailed(f Family)
	// PartialSyncFailed: an iptables sync that wrote only changed chains failed; the next is full.
	PartialSyncFailed(f Family)
	// SyncFailed: an nftables transaction failed in family f.
	SyncFailed(f Family)
	// IPTablesRules: after a sync of f, table holds total rules of ours, written of them just now.
	IPTablesRules(f Family, table string, total, written int)
	// ConntrackCleaned: a walk of f's conntrack table took took and deleted deleted entries.
	ConntrackCleaned(f Family, took time.Duration, deleted int)
}

// NopRecorder records nothing: the default of every proxier.
type NopRecorder struct{}

// RestoreFailed implements Recorder.
func (NopRecorder) RestoreFailed(Family) {}

// PartialSyncFailed implements Recorder.
func (NopRecorder) PartialSyncFailed(Family) {}

// SyncFailed implements Recorder.
func (NopRecorder) SyncFailed(Family) {}

// IPTablesRules implements Recorder.
func (NopRecorder) IPTablesRules(Family, string, int, int) {}

// ConntrackCleaned implements Recorder.
func (NopRecorder) ConntrackCleaned(Family, time.Duration, int) {}

var _ Recorder = NopRecorder{}
