package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// kube-proxy's DaemonSet runs the binary with flags and no subcommand; nodeagent must take that
// command line as `run`. A flag only run knows proves the dispatch: any other path rejects it.
func TestFlagsWithoutCommandRunTheDaemon(t *testing.T) {
	var stderr bytes.Buffer
	err := dispatch(context.Background(), []string{"--layer2=false", "--manifests", t.TempDir() + "/missing"}, &bytes.Buffer{}, &stderr)
	if err == nil {
		t.Fatal("run with a missing manifests directory succeeded")
	}
	if strings.Contains(err.Error(), "unknown command") || strings.Contains(stderr.String(), "flag provided but not defined") {
		t.Fatalf("flags without a command were not taken as run: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("want run's complaint about --manifests, got %v", err)
	}
}
