package config

import (
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fakeSysctls records writes; names in readOnly refuse them as a non-initial namespace does.
type fakeSysctls struct {
	values   map[string]int
	writes   map[string]int
	readOnly map[string]bool
}

func (f *fakeSysctls) Get(path string) (string, error) {
	return strconv.Itoa(f.values[strings.TrimPrefix(path, "net/netfilter/")]), nil
}

func (f *fakeSysctls) Set(path, value string) error {
	name := strings.TrimPrefix(path, "net/netfilter/")
	if f.readOnly[name] {
		return &fs.PathError{Op: "open", Path: name, Err: fs.ErrPermission}
	}
	v, err := strconv.Atoi(value)
	if err != nil {
		return err
	}
	f.writes[name] = v
	f.values[name] = v
	return nil
}

func TestConntrackSettings(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	liberal := defaultConntrack()
	liberal.TCPBeLiberal = true
	liberal.UDPTimeout = metav1.Duration{Duration: 30 * time.Second}
	zero := int32(0)
	off := defaultConntrack()
	off.MaxPerCore = &zero
	for _, tc := range []struct {
		name     string
		cfg      Conntrack
		cpus     int
		current  map[string]int
		readOnly map[string]bool
		want     map[string]int
	}{
		{"kube-proxy defaults on 2 CPUs: the minimum wins", defaultConntrack(), 2, map[string]int{},
			nil, map[string]int{"nf_conntrack_max": 131072, "nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600}},
		{"8 CPUs: per core wins", defaultConntrack(), 8, map[string]int{}, nil,
			map[string]int{"nf_conntrack_max": 262144, "nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600}},
		{"values already in force are not written", defaultConntrack(), 2,
			map[string]int{"nf_conntrack_max": 131072, "nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600}, nil, map[string]int{}},
		{"max per core 0 leaves the maximum", off, 2, map[string]int{}, nil,
			map[string]int{"nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600}},
		{"liberal and UDP timeout", liberal, 2, map[string]int{}, nil,
			map[string]int{"nf_conntrack_max": 131072, "nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600,
				"nf_conntrack_tcp_be_liberal": 1, "nf_conntrack_udp_timeout": 30}},
		{"a network namespace cannot write the maximum: the rest still applies", defaultConntrack(), 2, map[string]int{},
			map[string]bool{"nf_conntrack_max": true}, map[string]int{"nf_conntrack_tcp_timeout_established": 86400, "nf_conntrack_tcp_timeout_close_wait": 3600}},
		{"all zero writes nothing", Conntrack{}, 2, map[string]int{}, nil, map[string]int{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeSysctls{values: tc.current, writes: map[string]int{}, readOnly: tc.readOnly}
			if err := tc.cfg.Apply(f, tc.cpus, quiet); err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(f.writes, tc.want) {
				t.Errorf("writes %v, want %v", f.writes, tc.want)
			}
		})
	}
}
