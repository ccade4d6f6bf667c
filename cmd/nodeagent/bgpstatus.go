package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"time"
)

// bgpStatusCmd prints the running agent's BGP sessions and advertised routes (its /debug/bgp).
func bgpStatusCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bgp status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("metrics-bind-address", "127.0.0.1:10249", "the agent's --metrics-bind-address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/debug/bgp", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("ask the agent at %s: %w", *addr, err)
	}
	defer resp.Body.Close()
	_, err = io.Copy(stdout, resp.Body)
	return err
}
