// Package plugin is kubectl-kcbackup, the kubectl plugin (`kubectl kcbackup ...`): day-2
// reads and requests through the Kubernetes API with the user's kubeconfig, never a
// port-forward or a sidecar token. Everything it does is a read or a write of
// KeycloakBackup resources (the operator acts on them) and, for logs, of the sidecar
// container's log through the API server, so RBAC decides what a user may do: the
// kcbackup-viewer role reads, kcbackup-editor requests backups and restores.
package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
)

// Main runs the plugin with args (without the program name) and returns the exit code:
// 0 done, 1 the request failed (a refused restore, a failed backup), 2 a usage error.
func Main(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := NewCommand(stdout, stderr, nil)
	cmd.SetArgs(args)
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(stderr, "error:", err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		return 1
	}
	return 0
}

// usageError is an error in what the user typed (exit 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// env is what every command needs: where to write, and how to reach the cluster.
type env struct {
	stdout, stderr io.Writer
	loader         clientcmd.ClientConfig
	output         string
	// connect builds the client; tests replace it with one for their API server.
	connect func() (client.Client, *rest.Config, string, error)
}

// NewCommand builds the command tree. connect, when not nil, replaces the kubeconfig
// (the tests give their API server's client, config and namespace).
func NewCommand(stdout, stderr io.Writer, connect func() (client.Client, *rest.Config, string, error)) *cobra.Command {
	e := &env{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "kubectl-kcbackup",
		Short: "Backups, recovery ranges, restores and sidecar logs of kcbackup, through the Kubernetes API",
		Long: `kubectl kcbackup reads and requests kcbackup's backups and restores with your kubeconfig:
everything goes through KeycloakBackup resources (the operator acts on them) and the API
server, never a port-forward or a sidecar token. What you may do is what RBAC lets you do on
keycloakbackups (kcbackup-viewer reads, kcbackup-editor requests backups and restores).

Install: put kubectl-kcbackup on your PATH; kubectl finds it as "kubectl kcbackup".`,
		Example: `  kubectl kcbackup status -n keycloak
  kubectl kcbackup list keycloak-db -n keycloak
  kubectl kcbackup backup keycloak-db --wait
  kubectl kcbackup restore keycloak-db --to 2026-12-05T10:30:00Z --wait
  kubectl kcbackup logs keycloak-db -f`,
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	overrides := &clientcmd.ConfigOverrides{}
	pf := root.PersistentFlags()
	pf.StringVar(&rules.ExplicitPath, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	pf.StringVar(&overrides.CurrentContext, "context", "", "the kubeconfig context to use")
	pf.StringVarP(&overrides.Context.Namespace, "namespace", "n", "", "the namespace (default: the context's)")
	pf.StringVarP(&e.output, "output", "o", "table", "output format: table or json")
	e.loader = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	e.connect = connect
	if e.connect == nil {
		e.connect = e.fromKubeconfig
	}
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if e.output != "table" && e.output != "json" {
			return usagef("invalid --output %q: expected table or json", e.output)
		}
		return nil
	}
	root.AddCommand(e.statusCommand(), e.listCommand(), e.backupCommand(), e.restoreCommand(), e.drillCommand(), e.logsCommand())
	return root
}

// fromKubeconfig connects with the user's kubeconfig, as kubectl does.
func (e *env) fromKubeconfig() (client.Client, *rest.Config, string, error) {
	cfg, err := e.loader.ClientConfig()
	if err != nil {
		return nil, nil, "", fmt.Errorf("cannot load the kubeconfig: %w", err)
	}
	ns, _, err := e.loader.Namespace()
	if err != nil {
		return nil, nil, "", fmt.Errorf("cannot tell the namespace from the kubeconfig: %w", err)
	}
	c, err := client.New(cfg, client.Options{Scheme: Scheme()})
	if err != nil {
		return nil, nil, "", fmt.Errorf("cannot reach the API server %s: %w", cfg.Host, err)
	}
	return c, cfg, ns, nil
}

// Scheme holds the kinds the plugin reads and writes.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	_ = clientgoscheme.AddToScheme(s)
	_ = kcv1.AddToScheme(s)
	return s
}

// printJSON writes v as indented JSON.
func (e *env) printJSON(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// age formats how long ago t was, as kubectl does ("5m", "3h", "2d").
func age(t time.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "in " + age(now, t)
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}
