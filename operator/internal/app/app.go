package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
)

// Config is everything the operator needs to run.
type Config struct {
	// SidecarImage is the kcbackup image injected as sidecar and run by restore Jobs.
	SidecarImage string
	// MetricsAddr is where /metrics is served (":8443"); "0" disables it.
	MetricsAddr string
	// MetricsSecure serves /metrics over HTTPS to callers the API server authenticates and
	// authorises (get on the non-resource URL /metrics, the kcbackup-metrics-reader
	// ClusterRole); false serves plain HTTP to anyone who reaches the address (bind it to
	// localhost then).
	MetricsSecure bool
	// HealthAddr is where /healthz and /readyz are served (":8081").
	HealthAddr string
	// LeaderElect makes only one replica active at a time.
	LeaderElect bool
	// LeaderElectionNamespace holds the leader Lease; empty means the operator's namespace.
	LeaderElectionNamespace string
	// WatchNamespace restricts the operator to these namespaces, comma-separated; empty
	// means all. A namespaced install grants the operator a Role in each of them only.
	WatchNamespace string
	// RequireWorkloadOptIn makes the operator act only on workloads labelled
	// kcbackup.keycloak.org/opt-in=true (see controller.OptInLabel).
	RequireWorkloadOptIn bool
	// PollInterval is how often a running backup or restore step is checked.
	PollInterval time.Duration
	// BinaryDelivery is how the kcbackup binary reaches PostgreSQL's pod and the restore
	// Job: "image-volume", "init-container", or "auto" (image volumes from Kubernetes 1.36 on,
	// an init container before; see ResolveBinaryDelivery).
	BinaryDelivery string
	// ServiceAccountNamespaceFile is where a pod finds its namespace; its absence means the
	// operator runs outside a cluster.
	ServiceAccountNamespaceFile string
}

// SidecarRepository is the repository of the released kcbackup images.
const SidecarRepository = "ghcr.io/kcbackup/kcbackup"

// releaseVersion matches the versions releases are tagged with (v1.2.3, v1.2.3-rc.1).
var releaseVersion = regexp.MustCompile(`^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?$`)

// DefaultSidecarImage is the released kcbackup image of the operator's own version, as
// CloudNativePG defaults its images; "" for a development build, which has no release.
func DefaultSidecarImage(version string) string {
	if !releaseVersion.MatchString(version) {
		return ""
	}
	return SidecarRepository + ":" + version
}

// DefaultConfig returns the defaults the flags start from.
func DefaultConfig() Config {
	return Config{
		MetricsAddr:          ":8443",
		MetricsSecure:        true,
		HealthAddr:           ":8081",
		LeaderElect:          true,
		RequireWorkloadOptIn: true,
		PollInterval:         kccontroller.DefaultPollInterval,
		BinaryDelivery:       BinaryDeliveryAuto,

		ServiceAccountNamespaceFile: "/var/run/secrets/kubernetes.io/serviceaccount/namespace",
	}
}

// Validate checks the configuration and names the first bad setting.
func (c Config) Validate() error {
	if c.SidecarImage == "" {
		return errors.New("--sidecar-image (or KCBACKUP_SIDECAR_IMAGE) is required for a development build: " +
			"the kcbackup image to inject (a release defaults to " + SidecarRepository + ":<its version>)")
	}
	if c.LeaderElect && c.LeaderElectionNamespace == "" {
		if _, err := os.Stat(c.ServiceAccountNamespaceFile); err != nil {
			return errors.New("--leader-elect needs the namespace of its Lease, and outside a cluster there is none to default to: " +
				"pass --leader-election-namespace NAMESPACE, or --leader-elect=false when only this operator runs")
		}
	}
	for name, addr := range map[string]string{"--metrics-bind-address": c.MetricsAddr, "--health-probe-bind-address": c.HealthAddr} {
		if addr == "0" {
			continue
		}
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s %q is not host:port (such as \":8080\"): %w", name, addr, err)
		}
	}
	if _, err := c.WatchNamespaces(); err != nil {
		return err
	}
	switch c.BinaryDelivery {
	case BinaryDeliveryAuto, string(kccontroller.DeliverByImageVolume), string(kccontroller.DeliverByInitContainer):
	default:
		return fmt.Errorf("--binary-delivery %q is not one of auto, image-volume, init-container", c.BinaryDelivery)
	}
	if c.PollInterval < time.Second || c.PollInterval > 10*time.Minute {
		return fmt.Errorf("--poll-interval %s is outside [1s, 10m]", c.PollInterval)
	}
	return nil
}

// NewScheme returns a scheme with the built-in types and KeycloakBackup.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := kcv1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// Run runs the operator against the cluster of restCfg until ctx ends.
func Run(ctx context.Context, cfg Config, restCfg *rest.Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	scheme, err := NewScheme()
	if err != nil {
		return err
	}
	opts := ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsOptions(cfg),
		HealthProbeBindAddress:  cfg.HealthAddr,
		LeaderElection:          cfg.LeaderElect,
		LeaderElectionID:        "kcbackup-operator.keycloak.org",
		LeaderElectionNamespace: cfg.LeaderElectionNamespace,
	}
	if nss, _ := cfg.WatchNamespaces(); len(nss) > 0 {
		opts.Cache = cache.Options{DefaultNamespaces: map[string]cache.Config{}}
		for _, ns := range nss {
			opts.Cache.DefaultNamespaces[ns] = cache.Config{}
		}
	}
	mgr, err := ctrl.NewManager(restCfg, opts)
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	delivery, why, err := ResolveBinaryDelivery(cfg.BinaryDelivery, restCfg)
	if err != nil {
		return err
	}
	ctrl.Log.Info("kcbackup binary delivery chosen", "delivery", delivery, "why", why)
	m, err := kccontroller.NewMetrics(metrics.Registry)
	if err != nil {
		return err
	}
	r := &kccontroller.Reconciler{
		Client:         mgr.GetClient(),
		APIReader:      mgr.GetAPIReader(),
		Recorder:       mgr.GetEventRecorder("kcbackup-operator"),
		Metrics:        m,
		SidecarImage:   cfg.SidecarImage,
		BinaryDelivery: delivery,
		PollInterval:   cfg.PollInterval,

		AllowWorkloadsWithoutOptIn: !cfg.RequireWorkloadOptIn,
	}
	if err := r.SetupWithManager(mgr, controller.Options{}); err != nil {
		return fmt.Errorf("set up controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("readyz", healthz.Ping); err != nil {
		return err
	}
	return mgr.Start(ctx)
}

// WatchNamespaces returns the namespaces of --namespace, none for all; a name that is not a
// namespace name is an error naming it.
func (c Config) WatchNamespaces() ([]string, error) {
	if strings.TrimSpace(c.WatchNamespace) == "" {
		return nil, nil
	}
	var out []string
	for _, ns := range strings.Split(c.WatchNamespace, ",") {
		ns = strings.TrimSpace(ns)
		if errs := validation.IsDNS1123Label(ns); len(errs) > 0 {
			return nil, fmt.Errorf("--namespace %q: %q is not a namespace name (%s); give namespaces separated by commas", c.WatchNamespace, ns, strings.Join(errs, "; "))
		}
		if !slices.Contains(out, ns) {
			out = append(out, ns)
		}
	}
	return out, nil
}

// metricsOptions serves /metrics as cfg says: over HTTPS behind the API server's
// authentication (TokenReview) and authorisation (SubjectAccessReview), as kubebuilder
// scaffolds it, or plain.
func metricsOptions(cfg Config) metricsserver.Options {
	o := metricsserver.Options{BindAddress: cfg.MetricsAddr, SecureServing: cfg.MetricsSecure}
	if cfg.MetricsSecure {
		o.FilterProvider = filters.WithAuthenticationAndAuthorization
	}
	return o
}
