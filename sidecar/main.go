// Command kcbackup is the sidecar that archives a PostgreSQL cluster's WAL continuously
// and takes and restores base backups. See `kcbackup --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"slices"
	"syscall"

	"github.com/kcbackup/kcbackup/sidecar/internal/cli"
	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
)

func main() {
	if slices.Contains(os.Args[1:], "--prefetch-worker") {
		// The prefetcher may be reaped by a PID-1 postmaster, which restarts every backend
		// when a child dies by a signal or exits other than 0 or 1. Until its own handlers
		// are in place, a termination signal ends it with status 0.
		early := make(chan os.Signal, 1)
		signal.Notify(early, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGPIPE)
		go func() {
			<-early
			os.Exit(0)
		}()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := cli.Execute(ctx, buildinfo.Get().String(), os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
