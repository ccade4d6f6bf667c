package source

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
)

// quietLog discards log output; tests that look at logs make their own handler.
var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder is a Sink that keeps the current objects by key and counts calls.
type recorder struct {
	mu      sync.Mutex
	objs    map[Key]runtime.Object
	synced  int
	upserts int
	deletes int
	// lastUpsert is when the last upsert arrived.
	lastUpsert time.Time
}

func newRecorder() *recorder { return &recorder{objs: map[Key]runtime.Object{}} }

func (r *recorder) Upsert(obj runtime.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.objs[keyOf(obj)] = obj
	r.upserts++
	r.lastUpsert = time.Now()
}

func (r *recorder) Delete(obj runtime.Object) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.objs, keyOf(obj))
	r.deletes++
}

// keyOf is objectKey for any kind: the kinds objectKey does not know (the MetalLB kinds) by their
// type meta.
func keyOf(obj runtime.Object) Key {
	if k := objectKey(obj); k != (Key{}) {
		return k
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return Key{}
	}
	return Key{GroupKind: obj.GetObjectKind().GroupVersionKind().GroupKind(), Namespace: m.GetNamespace(), Name: m.GetName()}
}

func (r *recorder) Synced() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced++
}

func (r *recorder) get(k Key) runtime.Object {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.objs[k]
}

func (r *recorder) snapshot() map[Key]runtime.Object {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[Key]runtime.Object, len(r.objs))
	for k, v := range r.objs {
		out[k] = v
	}
	return out
}

func (r *recorder) counts() (synced, upserts, deletes int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.synced, r.upserts, r.deletes
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func svcKey(ns, name string) Key { return Key{GroupKind: serviceKind, Namespace: ns, Name: name} }
func sliceKey(ns, name string) Key {
	return Key{GroupKind: endpointSliceKind, Namespace: ns, Name: name}
}

// writeFile writes a manifest into dir atomically (temporary file and rename), as editors do.
func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	tmp := filepath.Join(dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		t.Fatal(err)
	}
}

// seedDir copies the seed manifests (all but those named in skip) into a new temporary directory.
func seedDir(t *testing.T, skip ...string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir("testdata/seed")
	if err != nil {
		t.Fatal(err)
	}
outer:
	for _, e := range entries {
		for _, s := range skip {
			if e.Name() == s {
				continue outer
			}
		}
		data, err := os.ReadFile(filepath.Join("testdata/seed", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}
