// Command kcbackup is the sidecar that archives a PostgreSQL cluster's WAL continuously
// and takes and restores base backups. See `kcbackup --help`.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/kcbackup/kcbackup/sidecar/internal/cli"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := cli.Execute(ctx, version, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
