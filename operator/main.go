package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"

	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/kcbackup/kcbackup/operator/internal/app"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	cfg := app.DefaultConfig()
	fs := flag.NewFlagSet("kcbackup-operator", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: kcbackup-operator [flags]\n\n"+
			"Runs the KeycloakBackup operator: injects the kcbackup sidecar, takes base backups and\n"+
			"restores the PostgreSQL database behind Keycloak in place. Supported PostgreSQL versions:\n"+
			"15, 16, 17, 18 and 19.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.SidecarImage, "sidecar-image", orDefault(os.Getenv("KCBACKUP_SIDECAR_IMAGE"), app.DefaultSidecarImage(version)),
		"kcbackup image injected as sidecar and run by restore Jobs (env KCBACKUP_SIDECAR_IMAGE; default: the release image of this version, "+
			app.SidecarRepository+":<version>; required for a development build)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-bind-address", cfg.MetricsAddr, "address of /metrics; \"0\" disables it")
	fs.StringVar(&cfg.HealthAddr, "health-probe-bind-address", cfg.HealthAddr, "address of /healthz and /readyz")
	fs.BoolVar(&cfg.LeaderElect, "leader-elect", cfg.LeaderElect, "let only one replica act at a time (outside a cluster: needs --leader-election-namespace, or pass --leader-elect=false)")
	fs.StringVar(&cfg.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader Lease (default: the operator's own, in a cluster)")
	fs.StringVar(&cfg.WatchNamespace, "namespace", os.Getenv("KCBACKUP_WATCH_NAMESPACE"), "watch only this namespace (env KCBACKUP_WATCH_NAMESPACE; default: all)")
	fs.StringVar(&cfg.BinaryDelivery, "binary-delivery", orDefault(os.Getenv("KCBACKUP_BINARY_DELIVERY"), cfg.BinaryDelivery),
		"how the kcbackup binary reaches PostgreSQL's pod and the restore Job: image-volume, init-container (an emptyDir filled by an "+
			"init container), or auto: image-volume on Kubernetes 1.36 or later, init-container before (env KCBACKUP_BINARY_DELIVERY)")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", cfg.PollInterval, "how often a running backup or restore step is checked")
	showVersion := fs.Bool("version", false, "print the version and exit")
	debug := fs.Bool("debug", false, "log at debug level")
	_ = fs.Parse(os.Args[1:])

	if *showVersion {
		fmt.Println("kcbackup-operator", version)
		return
	}
	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	ctrl.SetLogger(logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "kcbackup-operator:", err)
		os.Exit(2)
	}
	restCfg, err := ctrl.GetConfig()
	if err != nil {
		fmt.Fprintln(os.Stderr, "kcbackup-operator: kubeconfig:", err)
		os.Exit(1)
	}
	ctrl.Log.Info("starting", "version", version, "sidecarImage", cfg.SidecarImage)
	if err := app.Run(ctrl.SetupSignalHandler(), cfg, restCfg); err != nil {
		fmt.Fprintln(os.Stderr, "kcbackup-operator:", err)
		os.Exit(1)
	}
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
