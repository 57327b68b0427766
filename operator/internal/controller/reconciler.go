package controller

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// The operator's permissions, least privilege: it reads and scales workloads and patches
// their pod template, reads pods, creates the token Secret and reads the Secrets a spec
// names (uncached, so no list or watch on Secrets), and creates restore Jobs (owned by the
// resource, hence the finalizers permission that owner references with
// blockOwnerDeletion require) and Events.
//
// +kubebuilder:rbac:groups=keycloak.org,resources=keycloakbackups,verbs=get;list;watch
// +kubebuilder:rbac:groups=keycloak.org,resources=keycloakbackups/status,verbs=get;patch
// +kubebuilder:rbac:groups=keycloak.org,resources=keycloakbackups/finalizers,verbs=update
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=pods,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=get;list;watch;create
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Defaults of the Reconciler's tunables.
const (
	DefaultPollInterval  = 10 * time.Second
	DefaultRetryInterval = 30 * time.Second
	// DefaultWindowRefreshInterval bounds the archive listings of an idle schedule: each one
	// reads the whole catalog.
	DefaultWindowRefreshInterval = 5 * time.Minute
	// maxBackupsListed bounds status.backups.
	maxBackupsListed = 10
)

// Reconciler turns KeycloakBackup resources into work for the kcbackup sidecar.
type Reconciler struct {
	// Client reads and writes through the manager's cache.
	Client client.Client
	// APIReader reads Secrets straight from the API server, so the operator needs no list or
	// watch permission on Secrets.
	APIReader client.Reader
	// Recorder emits an Event for every action.
	Recorder events.EventRecorder
	// Clock decides schedule ticks; tests pass a fake one.
	Clock clock.PassiveClock
	// Metrics are updated as backups and restores finish.
	Metrics *Metrics
	// SidecarImage is the kcbackup image injected as sidecar and run by restore Jobs.
	SidecarImage string
	// BinaryDelivery says how the kcbackup binary reaches PostgreSQL's container and the
	// restore Job; empty means DeliverByImageVolume, DeliverByProbe decides per namespace.
	BinaryDelivery BinaryDelivery
	// AllowWorkloadsWithoutOptIn lets the operator patch, scale and mount workloads that do
	// not carry OptInLabel. The zero value requires the label (secure by default).
	AllowWorkloadsWithoutOptIn bool
	// deliveries are DeliverByProbe's decisions (delivery.go).
	deliveries deliveries
	// SidecarEndpoint returns the base URL of the sidecar API in a pod; nil means
	// http://<pod IP>:8008.
	SidecarEndpoint func(pod *corev1.Pod) string
	// PostgresAddress returns host:port of PostgreSQL in a pod, where the removal drops the
	// replication slot; nil means the pod IP and spec.postgres.port.
	PostgresAddress func(pod *corev1.Pod, port int32) string
	// HTTPClient calls the sidecars; nil means apiclient's default.
	HTTPClient *http.Client
	// PollInterval is how often a running backup or a restore step is checked.
	PollInterval time.Duration
	// RetryInterval is how long to wait before retrying after a missing prerequisite.
	RetryInterval time.Duration
	// MaxScheduleWait caps the wait for the next schedule tick (0: no cap). Tests with a fake
	// clock set it small, so the reconciler looks at the clock often.
	MaxScheduleWait time.Duration
	// WindowRefreshInterval is how often an idle schedule lists the archive to refresh
	// status.recoveryWindow; 0 means DefaultWindowRefreshInterval.
	WindowRefreshInterval time.Duration

	// windowSeen is when each resource's recovery window was last listed.
	windowMu   sync.Mutex
	windowSeen map[types.NamespacedName]time.Time
}

// SetupWithManager registers one controller per concern, as CloudNativePG keeps Backup,
// ScheduledBackup and recovery apart:
//
//   - keycloakbackup-backup: one-off and scheduled base backups and retention (backup.go);
//   - keycloakbackup-restore: in-place restores, a table of steps (restore.go), woken by the
//     restore Jobs it owns.
//
// Both first run the instance concern (instance.go): the workload, the Secrets, the token
// and the injected sidecar. A resource is one concern for life (restoreTo is immutable),
// so exactly one controller writes its status. Everything else is polled while it matters.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	r.defaults()
	// A status patch changes neither generation nor metadata: the operator's own writes do
	// not wake it up again (each wake-up may list the whole archive).
	// A deletion starting wakes it up too (the removal, removal.go).
	deleting := predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
		return e.ObjectOld.GetDeletionTimestamp() == nil && e.ObjectNew.GetDeletionTimestamp() != nil
	}}
	changed := predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, predicate.LabelChangedPredicate{}, deleting)
	isRestore := predicate.NewPredicateFuncs(func(o client.Object) bool {
		kb, ok := o.(*kcv1.KeycloakBackup)
		return ok && kb.IsRestore()
	})
	// A drill that starts or ends wakes its archive's resource, which sums its drills up in
	// status.drill: a drill made by `kubectl kcbackup drill` is not owned by it, and with
	// the schedule idle or suspended nothing else would (seen on a real cluster: the
	// archive's status.drill still named the scheduled drill after a manual one passed).
	drillPhase := predicate.And(predicate.NewPredicateFuncs(func(o client.Object) bool { return o.GetLabels()[kcv1.DrillOfLabel] != "" }),
		predicate.Funcs{UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*kcv1.KeycloakBackup)
			n, ok2 := e.ObjectNew.(*kcv1.KeycloakBackup)
			return ok1 && ok2 && o.Status.Phase != n.Status.Phase
		}})
	toArchive := handler.EnqueueRequestsFromMapFunc(func(_ context.Context, o client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: o.GetLabels()[kcv1.DrillOfLabel]}}}
	})
	if err := ctrl.NewControllerManagedBy(mgr).
		For(&kcv1.KeycloakBackup{}, builder.WithPredicates(changed, predicate.Not(isRestore))).
		Watches(&kcv1.KeycloakBackup{}, toArchive, builder.WithPredicates(drillPhase)).
		WithOptions(opts).
		Named("keycloakbackup-backup").
		Complete(concernReconciler{r: r, restores: false}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		For(&kcv1.KeycloakBackup{}, builder.WithPredicates(changed, isRestore)).
		Owns(&batchv1.Job{}).
		WithOptions(opts).
		Named("keycloakbackup-restore").
		Complete(concernReconciler{r: r, restores: true})
}

// defaults fills the tunables left zero.
func (r *Reconciler) defaults() {
	if r.PollInterval == 0 {
		r.PollInterval = DefaultPollInterval
	}
	if r.RetryInterval == 0 {
		r.RetryInterval = DefaultRetryInterval
	}
	if r.WindowRefreshInterval == 0 {
		r.WindowRefreshInterval = DefaultWindowRefreshInterval
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.SidecarEndpoint == nil {
		r.SidecarEndpoint = func(p *corev1.Pod) string {
			return "http://" + p.Status.PodIP + ":" + strconv.Itoa(apiclient.DefaultPort)
		}
	}
}

// concernReconciler is the controller of one concern: it acts only on the resources of
// its concern (restores, or backups and schedules).
type concernReconciler struct {
	r        *Reconciler
	restores bool
}

// Reconcile implements reconcile.Reconciler.
func (c concernReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	return c.r.reconcileResource(ctx, req, func(kb *kcv1.KeycloakBackup) bool { return kb.IsRestore() == c.restores })
}

// Reconcile reconciles one resource, whatever its concern (the controllers registered by
// SetupWithManager each take only theirs).
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	return r.reconcileResource(ctx, req, func(*kcv1.KeycloakBackup) bool { return true })
}

// reconcileResource fetches the resource, runs the steps when mine says it is this
// controller's, and patches the status once if it changed.
//
// The resource is read from the API server, not from the cache: a cache that lags behind
// the last status patch would show an earlier restore step, and acting on it would repeat a
// step already done (scale PostgreSQL down again after the restore). The status patch
// carries the resourceVersion read (optimistic locking): if anything wrote the resource
// since, the patch is refused and the reconcile starts over from what is stored.
func (r *Reconciler) reconcileResource(ctx context.Context, req ctrl.Request, mine func(*kcv1.KeycloakBackup) bool) (ctrl.Result, error) {
	kb := &kcv1.KeycloakBackup{}
	if err := r.APIReader.Get(ctx, req.NamespacedName, kb); err != nil {
		if apierrors.IsNotFound(err) {
			// Deleted: its archive stays where it is; only its metrics go.
			r.Metrics.forget(req.Namespace, req.Name)
			r.forgetWindow(req)
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	if !mine(kb) {
		return ctrl.Result{}, nil
	}
	// The alert gauges come from the stored status first: a restarted operator exports them
	// before any backup or restore ends in this process.
	r.Metrics.seed(kb, r.Clock.Now())
	if kb.DeletionTimestamp != nil {
		return r.reconcileDeletion(ctx, kb)
	}
	if err := r.ensureFinalizer(ctx, kb); err != nil {
		if apierrors.IsConflict(err) {
			return ctrl.Result{RequeueAfter: time.Millisecond}, nil
		}
		return ctrl.Result{}, err
	}
	before := kb.DeepCopy()
	res, err := r.reconcile(ctx, kb)
	kb.Status.ObservedGeneration = kb.Generation
	if !equality.Semantic.DeepEqual(before.Status, kb.Status) {
		perr := r.Client.Status().Patch(ctx, kb, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{}))
		if apierrors.IsConflict(perr) {
			log.FromContext(ctx).Info("the resource changed while it was reconciled; starting over", "resourceVersion", before.ResourceVersion)
			return ctrl.Result{RequeueAfter: time.Millisecond}, nil
		}
		if perr != nil {
			return ctrl.Result{}, errors.Join(err, fmt.Errorf("patch status: %w", perr))
		}
		// Counted once the failure is stored: a reconcile whose patch was refused runs again.
		if kb.IsDrill() && kb.IsTerminal() && !before.IsTerminal() {
			r.Metrics.drillEnded(kb.Namespace, kb.Spec.From, kb.Status.Phase == kcv1.PhaseRestored)
		}
		if kb.IsRestore() && !kb.IsDrill() && kb.Status.Phase == kcv1.PhaseFailed && before.Status.Phase != kcv1.PhaseFailed {
			if c := kb.Condition(kcv1.ConditionReady); c != nil {
				r.Metrics.restoreEndedFailed(kb.Namespace, kb.Name, c.Reason)
			}
		}
	}
	return res, err
}

// reconcile is the list of steps; each either finishes or asks to come back.
func (r *Reconciler) reconcile(ctx context.Context, kb *kcv1.KeycloakBackup) (ctrl.Result, error) {
	// Step 1: a finished backup or restore never runs again; a finished restore gives its
	// workload's restore lock back.
	if kb.IsTerminal() {
		if kb.IsRestore() {
			return ctrl.Result{}, r.releaseRestoreLock(ctx, kb)
		}
		return ctrl.Result{}, nil
	}
	// Step 2: a resource with spec.from works with the archive's settings of the resource it
	// names (from.go); a record of a backup does nothing.
	restore, res, ok, err := r.resolveFrom(ctx, kb)
	if !ok {
		return res, err
	}
	defer restore()
	// Step 3: the instance concern: a valid spec, one workload, its Secrets, its token and
	// its sidecar.
	in, res, ok, err := r.prepareInstance(ctx, kb)
	if !ok {
		return res, err
	}
	// Step 4: the work of this resource's concern.
	switch {
	case kb.IsRestore():
		return r.reconcileRestore(ctx, &restoreRun{kb: kb, db: in.w, loc: in.loc, token: in.token})
	case kb.IsScheduled():
		return r.reconcileSchedule(ctx, kb, in.w, in.token)
	default:
		return r.reconcileOnce(ctx, kb, in.w, in.token)
	}
}

// refreshWindow records the archive's recovery window as the sidecar reports it.
func (r *Reconciler) refreshWindow(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client) (apiclient.Catalog, error) {
	cat, err := sc.Catalog(ctx)
	if err != nil {
		return cat, err
	}
	r.windowMu.Lock()
	if r.windowSeen == nil {
		r.windowSeen = map[types.NamespacedName]time.Time{}
	}
	r.windowSeen[client.ObjectKeyFromObject(kb)] = r.Clock.Now()
	r.windowMu.Unlock()
	if cat.Window != nil {
		kb.Status.RecoveryWindow = &kcv1.RecoveryWindow{
			Earliest: metav1.NewTime(cat.Window.Earliest.UTC()), Latest: metav1.NewTime(cat.Window.Latest.UTC()),
		}
	}
	kb.Status.RecoveryRanges = nil
	for _, w := range cat.Windows {
		kb.Status.RecoveryRanges = append(kb.Status.RecoveryRanges, kcv1.RecoveryRange{Timeline: int64(w.Timeline),
			Earliest: metav1.NewTime(w.Earliest.UTC()), Latest: metav1.NewTime(w.Latest.UTC()), Hole: w.Hole})
	}
	return cat, nil
}

// windowDue reports whether an idle schedule should list the archive again: never listed
// by this operator process, or not for WindowRefreshInterval.
func (r *Reconciler) windowDue(kb *kcv1.KeycloakBackup) bool {
	r.windowMu.Lock()
	defer r.windowMu.Unlock()
	seen, ok := r.windowSeen[client.ObjectKeyFromObject(kb)]
	return !ok || kb.Status.RecoveryWindow == nil || r.Clock.Since(seen) >= r.WindowRefreshInterval
}

// forgetWindow drops the window bookkeeping of a deleted resource.
func (r *Reconciler) forgetWindow(req ctrl.Request) {
	r.windowMu.Lock()
	defer r.windowMu.Unlock()
	delete(r.windowSeen, req.NamespacedName)
}
