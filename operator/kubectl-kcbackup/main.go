// Command kubectl-kcbackup is the kubectl plugin of kcbackup: `kubectl kcbackup status`,
// `list`, `backup`, `restore` and `logs`, through the Kubernetes API with the user's
// kubeconfig. See `kubectl kcbackup --help` and docs/operator-guide.md.
package main

import (
	"os"

	"github.com/kcbackup/kcbackup/operator/internal/plugin"
)

func main() { os.Exit(plugin.Main(os.Args[1:], os.Stdout, os.Stderr)) }
