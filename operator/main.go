package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"

	"github.com/go-logr/logr"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/kcbackup/kcbackup/operator/internal/app"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "sidecar-manifest" {
		os.Exit(sidecarManifest(os.Args[2:]))
	}
	build := buildinfo.Get()
	cfg := app.DefaultConfig()
	fs := flag.NewFlagSet("kcbackup-operator", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: kcbackup-operator [flags]\n       kcbackup-operator sidecar-manifest --help\n\n"+
			"Runs the KeycloakBackup operator: injects the kcbackup sidecar, takes base backups and\n"+
			"restores the PostgreSQL database behind Keycloak in place. Supported PostgreSQL versions:\n"+
			"15, 16, 17, 18 and 19.\n\nFlags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&cfg.SidecarImage, "sidecar-image", orDefault(os.Getenv("KCBACKUP_SIDECAR_IMAGE"), app.DefaultSidecarImage(build.Version)),
		"kcbackup image injected as sidecar and run by restore Jobs (env KCBACKUP_SIDECAR_IMAGE; default: the release image of this version, "+
			app.SidecarRepository+":<version>; required for a development build)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-bind-address", cfg.MetricsAddr, "address of /metrics; \"0\" disables it")
	fs.BoolVar(&cfg.MetricsSecure, "metrics-secure", cfg.MetricsSecure, "serve /metrics over HTTPS to callers the API server authenticates and "+
		"authorises (get on /metrics: ClusterRole kcbackup-metrics-reader); false: plain HTTP to anyone, so bind it to localhost (127.0.0.1:8080)")
	fs.StringVar(&cfg.HealthAddr, "health-probe-bind-address", cfg.HealthAddr, "address of /healthz and /readyz")
	fs.BoolVar(&cfg.LeaderElect, "leader-elect", cfg.LeaderElect, "let only one replica act at a time (outside a cluster: needs --leader-election-namespace, or pass --leader-elect=false)")
	fs.StringVar(&cfg.LeaderElectionNamespace, "leader-election-namespace", "", "namespace of the leader Lease (default: the operator's own, in a cluster)")
	fs.StringVar(&cfg.WatchNamespace, "namespace", os.Getenv("KCBACKUP_WATCH_NAMESPACE"),
		"watch only these namespaces, comma-separated (env KCBACKUP_WATCH_NAMESPACE; default: all); a namespaced install grants a Role in each")
	fs.BoolVar(&cfg.RequireWorkloadOptIn, "require-workload-opt-in", cfg.RequireWorkloadOptIn,
		"patch, scale and mount only workloads labelled "+kccontroller.OptInLabel+"="+kccontroller.OptInValue+" (on the PostgreSQL workload, "+
			"and on what a restore scales, such as the Keycloak resource); false: any workload a KeycloakBackup selects")
	fs.StringVar(&cfg.BinaryDelivery, "binary-delivery", orDefault(os.Getenv("KCBACKUP_BINARY_DELIVERY"), cfg.BinaryDelivery),
		"how the kcbackup binary reaches PostgreSQL's pod and the restore Job: image-volume, init-container (an emptyDir filled by an "+
			"init container), or auto: init-container before Kubernetes 1.36; from 1.36 per namespace, image-volume where the API server admits a "+
			"dry-run pod with one, else init-container (env KCBACKUP_BINARY_DELIVERY)")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", cfg.PollInterval, "how often a running backup or restore step is checked")
	showVersion := fs.Bool("version", false, "print the version and exit")
	debug := fs.Bool("debug", false, "log at debug level")
	_ = fs.Parse(os.Args[1:])

	if *showVersion {
		fmt.Println("kcbackup-operator", build)
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
	ctrl.Log.Info("starting", "version", build.Version, "revision", build.Revision, "sidecarImage", cfg.SidecarImage)
	metrics.Registry.MustRegister(build.Collector())
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

// sidecarManifest runs `kcbackup-operator sidecar-manifest`: it prints the sidecar a
// workload in verify mode must declare, and returns the exit status.
func sidecarManifest(args []string) int {
	o := app.SidecarManifestOptions{BinaryDelivery: "image-volume"}
	fs := flag.NewFlagSet("kcbackup-operator sidecar-manifest", flag.ExitOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: kcbackup-operator sidecar-manifest --resource KEYCLOAKBACKUP.yaml --workload WORKLOAD.yaml [flags]\n\n"+
			"Prints, as a strategic-merge patch, the kcbackup sidecar the operator would inject into the PostgreSQL\n"+
			"Deployment or StatefulSet for that KeycloakBackup. Commit it to the workload's manifests (Argo CD, Flux)\n"+
			"with the annotation %s=%s, and the operator verifies it instead of patching.\n\nFlags:\n",
			kccontroller.SidecarModeAnnotation, kccontroller.SidecarModeVerify)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.ResourceFile, "resource", "", "file holding the KeycloakBackup (YAML or JSON)")
	fs.StringVar(&o.WorkloadFile, "workload", "", "file holding the PostgreSQL Deployment or StatefulSet (YAML or JSON)")
	fs.StringVar(&o.SidecarImage, "sidecar-image", orDefault(os.Getenv("KCBACKUP_SIDECAR_IMAGE"), app.DefaultSidecarImage(buildinfo.Get().Version)),
		"the kcbackup image the operator injects (env KCBACKUP_SIDECAR_IMAGE; default: the release image of this version)")
	fs.StringVar(&o.BinaryDelivery, "binary-delivery", o.BinaryDelivery, "image-volume or init-container, as the operator chose (it logs it at start, or with auto per namespace: event BinaryDeliveryChosen)")
	_ = fs.Parse(args)
	if err := o.Run(os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kcbackup-operator sidecar-manifest:", err)
		return 2
	}
	return 0
}
