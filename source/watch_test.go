package source

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// serviceYAML is a one-service manifest whose port tells versions apart.
func serviceYAML(name string, port int) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: {ports: [{port: %d}]}\n", name, port)
}

func servicePort(rec *recorder, name string) int32 {
	s, _ := rec.get(svcKey("default", name)).(*v1.Service)
	if s == nil || len(s.Spec.Ports) == 0 {
		return 0
	}
	return s.Spec.Ports[0].Port
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// noRescan is a rescan period no test lasts: what a test sees then came through the watch.
const noRescan = time.Hour

// TestRunFollowsRecreatedDirectory: the directory removed with everything in it and made again
// (rm -rf, mkdir, write) is watched again; while it is missing the objects stay served.
func TestRunFollowsRecreatedDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "manifests")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "web.yaml"), serviceYAML("web", 80))
	logs := &logBuffer{}
	m := &Manifests{Dir: dir, Log: slog.New(slog.NewTextHandler(logs, nil)), rescan: noRescan}
	rec := newRecorder()
	runManifests(t, m, rec, func() bool { return servicePort(rec, "web") == 80 })

	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the missing directory logged", func() bool { return logs.contains("keeping the objects served so far") })
	if servicePort(rec, "web") != 80 {
		t.Fatal("the objects went away with the directory")
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, dir, "web.yaml", serviceYAML("web", 81))
	eventually(t, "the recreated directory's content", func() bool { return servicePort(rec, "web") == 81 })

	// And it stays watched: a later edit arrives too.
	writeFile(t, dir, "web.yaml", serviceYAML("web", 82))
	eventually(t, "an edit in the recreated directory", func() bool { return servicePort(rec, "web") == 82 })
}

// TestRunFollowsConfigMapVolume: the layout and update of a Kubernetes ConfigMap volume (files are
// symlinks into ..data, which points to a timestamped directory that an update replaces by
// swapping the ..data link) is followed, both when the agent's directory is the volume and when
// it is a symlink that is itself swapped to another directory.
func TestRunFollowsConfigMapVolume(t *testing.T) {
	dir := t.TempDir()
	// kubelet's atomic writer: the new version in a new hidden directory, a ..data_tmp link to it
	// renamed over ..data, the old version removed.
	version := 0
	publish := func(content string) {
		t.Helper()
		version++
		ts := fmt.Sprintf("..2025_01_01_00_00_%02d.%d", version, 1000+version)
		if err := os.Mkdir(filepath.Join(dir, ts), 0o755); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(dir, ts, "web.yaml"), content)
		old, _ := os.Readlink(filepath.Join(dir, "..data"))
		mustSymlink(t, ts, filepath.Join(dir, "..data_tmp"))
		if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Lstat(filepath.Join(dir, "web.yaml")); os.IsNotExist(err) {
			mustSymlink(t, "..data/web.yaml", filepath.Join(dir, "web.yaml"))
		}
		if old != "" {
			if err := os.RemoveAll(filepath.Join(dir, old)); err != nil {
				t.Fatal(err)
			}
		}
	}
	publish(serviceYAML("web", 80))
	rec := newRecorder()
	runManifests(t, &Manifests{Dir: dir, Log: quietLog, rescan: noRescan}, rec, func() bool { return servicePort(rec, "web") == 80 })
	for port := 81; port <= 83; port++ {
		publish(serviceYAML("web", port))
		eventually(t, fmt.Sprintf("ConfigMap update to port %d", port), func() bool { return servicePort(rec, "web") == int32(port) })
	}

	// The agent's directory a symlink, swapped the same way to another directory.
	root := t.TempDir()
	for i, p := range []int{90, 91} {
		d := filepath.Join(root, fmt.Sprintf("v%d", i))
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		mustWrite(t, filepath.Join(d, "web.yaml"), serviceYAML("web", p))
	}
	link := filepath.Join(root, "current")
	mustSymlink(t, "v0", link)
	rec = newRecorder()
	runManifests(t, &Manifests{Dir: link, Log: quietLog, rescan: noRescan}, rec, func() bool { return servicePort(rec, "web") == 90 })
	mustSymlink(t, "v1", filepath.Join(root, "current.tmp"))
	if err := os.Rename(filepath.Join(root, "current.tmp"), link); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the swapped directory's content", func() bool { return servicePort(rec, "web") == 91 })
	writeFile(t, filepath.Join(root, "v1"), "web.yaml", serviceYAML("web", 92))
	eventually(t, "an edit in the swapped-in directory", func() bool { return servicePort(rec, "web") == 92 })
	// The old directory is no longer watched: an edit there changes nothing (the next rescan
	// would not see it either; this only checks that nothing crashes or flips back).
	writeFile(t, filepath.Join(root, "v0"), "web.yaml", serviceYAML("web", 99))
	writeFile(t, filepath.Join(root, "v1"), "web.yaml", serviceYAML("web", 93))
	eventually(t, "the latest edit", func() bool { return servicePort(rec, "web") == 93 })
}

// TestRunRescans: a change the watch cannot see (a manifest that is a symlink to a file in another
// directory, edited in place) is picked up by the periodic rescan.
func TestRunRescans(t *testing.T) {
	dir, elsewhere := t.TempDir(), t.TempDir()
	target := filepath.Join(elsewhere, "web.yaml")
	mustWrite(t, target, serviceYAML("web", 80))
	mustSymlink(t, target, filepath.Join(dir, "web.yaml"))
	rec := newRecorder()
	runManifests(t, &Manifests{Dir: dir, Log: quietLog, rescan: 20 * time.Millisecond}, rec,
		func() bool { return servicePort(rec, "web") == 80 })
	mustWrite(t, target, serviceYAML("web", 81))
	eventually(t, "the rescan to see the edit", func() bool { return servicePort(rec, "web") == 81 })
}

// TestRescanOfUnchangedDirectory: reading a directory whose files did not change returns the last
// result as it is, without combining again (what makes a rescan every few seconds cheap), and a
// file that could not be read is tried again.
func TestRescanOfUnchangedDirectory(t *testing.T) {
	dir := seedDir(t)
	l := newLoader(dir, []netip.Prefix{DefaultServiceCIDR}, DefaultNodePortRange)
	first, _, err := l.load()
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := l.load()
	if err != nil {
		t.Fatal(err)
	}
	if reflect.ValueOf(first.m).Pointer() != reflect.ValueOf(again.m).Pointer() {
		t.Error("an unchanged directory was combined again")
	}
	if err := os.Chmod(filepath.Join(dir, "redis.yaml"), 0); err != nil {
		t.Fatal(err)
	}
	if _, problems, _ := l.load(); os.Geteuid() != 0 && !hasProblem(problems, "redis.yaml", "permission denied") {
		t.Errorf("unreadable file not reported: %v", problems)
	}
	if err := os.Chmod(filepath.Join(dir, "redis.yaml"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, "redis.yaml")); err != nil {
		t.Fatal(err)
	}
	objs, _, _ := l.load()
	if objs.Get(svcKey("default", "redis")) != nil {
		t.Error("a removed file still served")
	}
}

// loadWithin runs Load with a deadline, so that a hang fails the test instead of blocking it.
func loadWithin(t *testing.T, dir string) (Objects, []Problem) {
	t.Helper()
	type result struct {
		objs     Objects
		problems []Problem
		err      error
	}
	done := make(chan result, 1)
	go func() {
		o, p, err := Load(dir)
		done <- result{o, p, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.objs, r.problems
	case <-time.After(10 * time.Second):
		t.Fatal("Load hangs")
	}
	return Objects{}, nil
}

func hasProblem(problems []Problem, file, reason string) bool {
	for _, p := range problems {
		if filepath.Base(p.File) == file && strings.Contains(p.Reason, reason) {
			return true
		}
	}
	return false
}

// TestLoadSkipsFIFO: a FIFO named *.yaml is a Problem, not a hang (nothing ever writes to it).
func TestLoadSkipsFIFO(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "web.yaml"), serviceYAML("web", 80))
	if err := syscall.Mkfifo(filepath.Join(dir, "pipe.yaml"), 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	// Through a symlink too: the check is on what the link points to.
	mustSymlink(t, "pipe.yaml", filepath.Join(dir, "link.yaml"))
	objs, problems := loadWithin(t, dir)
	if objs.Get(svcKey("default", "web")) == nil {
		t.Error("the regular manifest beside the FIFO was not served")
	}
	for _, f := range []string{"pipe.yaml", "link.yaml"} {
		if !hasProblem(problems, f, "not a regular file") {
			t.Errorf("%s not reported: %v", f, problems)
		}
	}
}

// TestLoadRefusesOversizedFile: a file over MaxManifestSize is a Problem and is not read; a file
// that grows over it after it was served keeps serving its last good version.
func TestLoadRefusesOversizedFile(t *testing.T) {
	dir := t.TempDir()
	huge := serviceYAML("huge", 80) + "# " + strings.Repeat("x", MaxManifestSize) + "\n"
	mustWrite(t, filepath.Join(dir, "huge.yaml"), huge)
	mustWrite(t, filepath.Join(dir, "web.yaml"), serviceYAML("web", 80))
	objs, problems := loadWithin(t, dir)
	if objs.Get(svcKey("default", "huge")) != nil || objs.Get(svcKey("default", "web")) == nil {
		t.Errorf("served %v", objs.Keys())
	}
	if !hasProblem(problems, "huge.yaml", "larger than 8 MiB") {
		t.Errorf("oversized file not reported: %v", problems)
	}

	logs := &logBuffer{}
	rec := newRecorder()
	runManifests(t, &Manifests{Dir: dir, Log: slog.New(slog.NewTextHandler(logs, nil)), rescan: noRescan}, rec,
		func() bool { return servicePort(rec, "web") == 80 })
	writeFile(t, dir, "web.yaml", strings.Replace(huge, "huge", "web", 1))
	eventually(t, "the grown file reported", func() bool { return logs.contains("larger than 8 MiB") })
	if servicePort(rec, "web") != 80 {
		t.Error("a file grown past the limit took its objects away")
	}
}

// TestRunKeepsServicesOnCollidingEdit: an edit that makes a service claim a cluster IP or node port
// another one holds, or need a node port none is left of, is refused as the API server would
// refuse the update: the service that holds the value keeps it, and the edited one keeps its last
// served version; whichever sorts first, in one file or in two.
func TestRunKeepsServicesOnCollidingEdit(t *testing.T) {
	dir := t.TempDir()
	nodePort := func(name, ip string, port int) string {
		return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata: {name: %s}\nspec: {type: NodePort, clusterIP: %s, ports: [{port: 80, nodePort: %d}]}\n", name, ip, port)
	}
	writeFile(t, dir, "a.yaml", nodePort("a", "10.96.0.50", 30080))
	writeFile(t, dir, "b.yaml", nodePort("b", "10.96.0.51", 30081))
	writeFile(t, dir, "cd.yaml", nodePort("c", "10.96.0.52", 30082)+"---\n"+nodePort("d", "10.96.0.53", 30083))
	writeFile(t, dir, "small.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {ports: [{name: a, port: 1}, {name: b, port: 2}, {name: c, port: 3}]}\n")
	logs := &logBuffer{}
	rec := newRecorder()
	m := &Manifests{Dir: dir, NodePortRange: PortRange{First: 30080, Last: 30085}, Log: slog.New(slog.NewTextHandler(logs, nil)), rescan: noRescan}
	runManifests(t, m, rec, func() bool { return len(rec.snapshot()) == 5 })
	snapshot := func() map[string]string {
		out := map[string]string{}
		for k, o := range rec.snapshot() {
			s := o.(*v1.Service)
			out[k.Name] = fmt.Sprintf("%s %s %v", s.Spec.Type, s.Spec.ClusterIP, s.Spec.Ports)
		}
		return out
	}
	before := snapshot()
	unchanged := func(what string) {
		t.Helper()
		eventually(t, what+" refused", func() bool { return logs.contains("serving its last valid version") })
		if got := snapshot(); !equality.Semantic.DeepEqual(got, before) {
			t.Errorf("after %s:\n got %v\nwant %v", what, got, before)
		}
		logs.reset()
	}

	// b, sorting after a, claims a's node port.
	writeFile(t, dir, "b.yaml", nodePort("b", "10.96.0.51", 30080))
	unchanged("b claiming a's node port")
	// a, sorting before b, claims b's cluster IP (and b is still broken).
	writeFile(t, dir, "a.yaml", nodePort("a", "10.96.0.51", 30080))
	unchanged("a claiming b's cluster IP")
	// In one file: c claims d's node port, then d claims c's.
	writeFile(t, dir, "cd.yaml", nodePort("c", "10.96.0.52", 30083)+"---\n"+nodePort("d", "10.96.0.53", 30083))
	unchanged("c and d claiming one node port")
	// e becomes a NodePort service needing three node ports; two are left.
	writeFile(t, dir, "small.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: e}\nspec: {type: NodePort, ports: [{name: a, port: 1}, {name: b, port: 2}, {name: c, port: 3}]}\n")
	unchanged("e needing more node ports than are left")

	// Fixed, the edits are served.
	writeFile(t, dir, "b.yaml", nodePort("b", "10.96.0.51", 30084))
	eventually(t, "b's fixed edit", func() bool {
		s, _ := rec.get(svcKey("default", "b")).(*v1.Service)
		return s != nil && s.Spec.Ports[0].NodePort == 30084
	})
}
