package ipvs

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"nodeagent/proxier"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the render (run with -update after checking):\n%s", path, got)
	}
}

// TestRender pins the whole render of the test state: virtual servers, real servers, the
// annotation's scheduler, persistence, and the helper tables.
func TestRender(t *testing.T) {
	p := NewRenderer(Options{Scheduler: "rr"})
	var b bytes.Buffer
	if err := p.Render(&b, testState()); err != nil {
		t.Fatal(err)
	}
	golden(t, "render.txt", b.Bytes())
	out := b.String()
	for _, want := range []string{
		"-A -t 10.96.0.10:80 -s rr\n",
		"-a -t 10.96.0.10:80 -r 10.244.2.5:80 -m -w 1\n",
		"-A -t 10.0.0.151:30080 -s rr\n",                  // node port on the node address
		"-A -t [fd00:10::151]:30080 -s rr\n",              // and on the IPv6 one
		"-A -t 10.96.0.20:80 -s wlc\n",                    // scheduler from the annotation
		"-A -t 10.96.0.30:8080 -s rr -p 600\n",            // ClientIP affinity
		"-A -u [fd00:96::30]:5000 -s rr -p 10800\n",       // default timeout, IPv6, UDP
		"-A --sctp-service 10.96.0.40:9999 -s rr\n",       // SCTP
		"-a -t 10.0.0.51:80 -r 10.244.1.7:8080 -m -w 1\n", // ETP Local: the local endpoint only
		"10.0.0.52 . tcp . 80",                            // ETP Local without local endpoints ...
		"-a -u 10.96.0.53:53 -r 10.244.1.53:53 -m -w 1\n", // ITP Local
		"# 10.0.0.200/32\n",                               // external IP bound to the dummy
		"ip saddr 203.0.113.0/25 return",                  // source ranges
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render lacks %q", want)
		}
	}
	if strings.Contains(out, "-a -t 10.0.0.51:80 -r 10.244.2.7:8080") {
		t.Error("ETP Local load-balancer IP has a remote endpoint")
	}
	if strings.Contains(out, "-r 10.244.2.53:53 -m -w 1\n-A -u") {
		t.Error("ITP Local cluster IP has a remote endpoint")
	}
}

// TestRenderSchedulers: the default scheduler comes from the options, an unknown annotation
// falls back to it.
func TestRenderSchedulers(t *testing.T) {
	st := testState()
	service(st, "demoapp", proxier.IPv4).Scheduler = "nonsense"
	var b bytes.Buffer
	if err := NewRenderer(Options{Scheduler: "sh"}).Render(&b, st); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "-A -t 10.96.0.10:80 -s sh\n") {
		t.Errorf("unknown scheduler annotation did not fall back to the option's:\n%s", b.String())
	}
	if !strings.Contains(b.String(), "-A -t 10.96.0.20:80 -s wlc\n") {
		t.Error("annotation lost")
	}
}

// TestRenderIsValidNft checks the helper tables of the render with nft itself (nft -c parses
// and checks against the kernel without committing), in a namespace of the test's own.
func TestRenderIsValidNft(t *testing.T) {
	ns := newNS(t)
	var b bytes.Buffer
	if err := NewRenderer(Options{}).Render(&b, testState()); err != nil {
		t.Fatal(err)
	}
	var nftText strings.Builder
	for _, l := range strings.SplitAfter(b.String(), "\n") {
		if !strings.HasPrefix(l, "-") && !strings.HasPrefix(l, "#") {
			nftText.WriteString(l)
		}
	}
	if out, err := inNS(ns, nftText.String(), "nft", "-c", "-f", "-"); err != nil {
		t.Fatalf("nft rejects the rendered tables: %v\n%s\n%s", err, out, nftText.String())
	}
}
