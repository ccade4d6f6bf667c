// Command pause is the sandbox process of every pod in the cluster harness (the image
// registry.k8s.io/pause:3.10.1 that containerd's CRI plugin runs): it holds the pod's namespaces
// open, reaps the zombies of processes that share its PID namespace, and exits on SIGINT or
// SIGTERM. Built static, it is the whole image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every child that has exited; as PID 1 of a shared PID namespace, the orphans
		// of other containers are ours.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
