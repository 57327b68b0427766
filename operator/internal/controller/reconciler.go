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
	// SidecarEndpoint returns the base URL of the sidecar API in a pod; nil means
	// http://<pod IP>:8008.
	SidecarEndpoint func(pod *corev1.Pod) string
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

// SetupWithManager registers the reconciler with the manager. It reacts to KeycloakBackups
// and to the restore Jobs it owns; everything else is polled while it matters.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
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
	// A status patch changes neither generation nor metadata: the operator's own writes do
	// not wake it up again (each wake-up may list the whole archive).
	changed := predicate.Or(predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}, predicate.LabelChangedPredicate{})
	return ctrl.NewControllerManagedBy(mgr).
		For(&kcv1.KeycloakBackup{}, builder.WithPredicates(changed)).
		Owns(&batchv1.Job{}).
		WithOptions(opts).
		Named("keycloakbackup").
		Complete(r)
}

// Reconcile fetches the resource, runs the steps, and patches the status once if it changed.
//
// The resource is read from the API server, not from the cache: a cache that lags behind
// the last status patch would show an earlier restore step, and acting on it would repeat a
// step already done (scale PostgreSQL down again after the restore). The status patch
// carries the resourceVersion read (optimistic locking): if anything wrote the resource
// since, the patch is refused and the reconcile starts over from what is stored.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
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
	// The alert gauges come from the stored status first: a restarted operator exports them
	// before any backup or restore ends in this process.
	r.Metrics.seed(kb, r.Clock.Now())
	if kb.DeletionTimestamp != nil {
		return ctrl.Result{}, nil
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
		if kb.IsRestore() && kb.Status.Phase == kcv1.PhaseFailed && before.Status.Phase != kcv1.PhaseFailed {
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
	// Step 2: refuse what admission could not check, for good.
	if err := kb.Spec.Validate(); err != nil {
		var se *kcv1.SpecError
		reason := kcv1.ReasonInvalidSpec
		if errors.As(err, &se) {
			reason = se.Reason
		}
		r.setProblem(kb, kcv1.ConditionValid, reason, err.Error())
		kb.Status.Phase = kcv1.PhaseFailed
		return ctrl.Result{}, reconcile.TerminalError(err)
	}
	kb.SetCondition(kcv1.ConditionValid, metav1.ConditionTrue, kcv1.ReasonValid, "the spec is valid")
	if kb.Status.Phase == "" {
		kb.Status.Phase = kcv1.PhasePending
	}

	// Step 3: exactly one workload, holding its data on a volume.
	w, loc, ok, err := r.resolveInstance(ctx, kb)
	if err != nil || !ok {
		return ctrl.Result{RequeueAfter: r.RetryInterval}, err
	}
	// Step 4: an older resource archiving the same workload elsewhere wins.
	if ok, err := r.checkConflict(ctx, kb, w); err != nil || !ok {
		return ctrl.Result{RequeueAfter: r.RetryInterval}, err
	}
	// Step 5: every Secret the spec names exists, with its key.
	if ok, err := r.checkSecrets(ctx, kb); err != nil || !ok {
		return ctrl.Result{RequeueAfter: r.RetryInterval}, err
	}
	// Step 6: the token Secret the sidecar requires on its API.
	token, err := r.ensureToken(ctx, kb, w)
	if err != nil {
		return ctrl.Result{}, err
	}
	// Step 7: the sidecar in the pod template, kept there.
	if err := r.ensureSidecar(ctx, kb, w, loc); err != nil {
		return ctrl.Result{}, err
	}
	// Step 8: the work itself.
	switch {
	case kb.IsRestore():
		return r.reconcileRestore(ctx, kb, w, loc, token)
	case kb.IsScheduled():
		return r.reconcileSchedule(ctx, kb, w, token)
	default:
		return r.reconcileOnce(ctx, kb, w, token)
	}
}

// setProblem sets a condition to False and, when it just became so or changed reason,
// emits a Warning event; Ready follows with the same reason.
func (r *Reconciler) setProblem(kb *kcv1.KeycloakBackup, condType, reason, msg string) {
	status := metav1.ConditionFalse
	if condType == kcv1.ConditionConflict {
		status = metav1.ConditionTrue
	}
	if c := kb.Condition(condType); c == nil || c.Status != status || c.Reason != reason {
		r.Recorder.Eventf(kb, nil, corev1.EventTypeWarning, reason, "Validate", "%s", msg)
	}
	kb.SetCondition(condType, status, reason, msg)
	kb.SetCondition(kcv1.ConditionReady, metav1.ConditionFalse, reason, msg)
}

// resolveInstance finds the one workload the instance selector matches and where its data
// lies. ok is false, with a condition set, when there is not exactly one.
func (r *Reconciler) resolveInstance(ctx context.Context, kb *kcv1.KeycloakBackup) (workload, dataLocation, bool, error) {
	ws, err := listWorkloads(ctx, r.Client, kb.Namespace, &kb.Spec.InstanceSelector)
	if err != nil {
		return workload{}, dataLocation{}, false, err
	}
	switch len(ws) {
	case 0:
		r.setProblem(kb, kcv1.ConditionInstanceResolved, kcv1.ReasonNoWorkloadMatched,
			"spec.instanceSelector matches no Deployment or StatefulSet in namespace "+kb.Namespace)
		return workload{}, dataLocation{}, false, nil
	case 1:
	default:
		names := ""
		for i, w := range ws {
			if i > 0 {
				names += ", "
			}
			names += w.String()
		}
		r.setProblem(kb, kcv1.ConditionInstanceResolved, kcv1.ReasonMultipleWorkloadsMatched,
			"spec.instanceSelector matches "+strconv.Itoa(len(ws))+" workloads ("+names+"); it must match exactly one")
		return workload{}, dataLocation{}, false, nil
	}
	w := ws[0]
	loc, err := locateData(w, kb.Spec.Postgres.ContainerName, kb.Spec.Postgres.DataDir)
	if err != nil {
		r.setProblem(kb, kcv1.ConditionInstanceResolved, kcv1.ReasonDataVolumeNotFound, err.Error())
		return workload{}, dataLocation{}, false, nil
	}
	kb.Status.Instance = &kcv1.WorkloadReference{Kind: w.Kind, Name: w.Name()}
	kb.SetCondition(kcv1.ConditionInstanceResolved, metav1.ConditionTrue, kcv1.ReasonWorkloadFound, "selected "+w.String())
	return w, loc, true, nil
}

// checkConflict refuses to act when an older resource selects the same workload with a
// different archive: two sidecars cannot archive one database to two places.
func (r *Reconciler) checkConflict(ctx context.Context, kb *kcv1.KeycloakBackup, w workload) (bool, error) {
	var all kcv1.KeycloakBackupList
	if err := r.Client.List(ctx, &all, client.InNamespace(kb.Namespace)); err != nil {
		return false, fmt.Errorf("list KeycloakBackups: %w", err)
	}
	for i := range all.Items {
		o := &all.Items[i]
		if o.UID == kb.UID || o.DeletionTimestamp != nil || !selects(&o.Spec.InstanceSelector, w) {
			continue
		}
		if kb.Spec.SameArchive(&o.Spec) || !olderThan(o, kb) {
			continue
		}
		r.setProblem(kb, kcv1.ConditionConflict, kcv1.ReasonStorageConflict, fmt.Sprintf(
			"KeycloakBackup %q, created earlier, selects %s with a different storage or postgres connection; "+
				"this resource does nothing until they agree or %q is deleted", o.Name, w, o.Name))
		return false, nil
	}
	kb.SetCondition(kcv1.ConditionConflict, metav1.ConditionFalse, kcv1.ReasonNoConflict, "no other resource archives "+w.String()+" elsewhere")
	return true, nil
}

func olderThan(a, b *kcv1.KeycloakBackup) bool {
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.CreationTimestamp.Before(&b.CreationTimestamp)
	}
	return a.Name < b.Name
}

// checkSecrets verifies that each Secret the spec names exists and holds its key.
func (r *Reconciler) checkSecrets(ctx context.Context, kb *kcv1.KeycloakBackup) (bool, error) {
	type ref struct{ field, name, key string }
	var refs []ref
	if s3 := kb.Spec.Storage.S3; s3 != nil {
		if c := s3.CredentialsSecret; c != nil {
			refs = append(refs,
				ref{"spec.storage.s3.credentialsSecret", c.Name, orDefault(c.AccessKeyIDKey, "AWS_ACCESS_KEY_ID")},
				ref{"spec.storage.s3.credentialsSecret", c.Name, orDefault(c.SecretAccessKeyKey, "AWS_SECRET_ACCESS_KEY")})
		}
		if c := s3.CASecret; c != nil {
			refs = append(refs, ref{"spec.storage.s3.caSecret", c.Name, c.Key})
		}
	}
	if p := kb.Spec.Postgres.PasswordSecret; p != nil {
		refs = append(refs, ref{"spec.postgres.passwordSecret", p.Name, p.Key})
	}
	for _, rf := range refs {
		var s corev1.Secret
		err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: kb.Namespace, Name: rf.name}, &s)
		if apierrors.IsNotFound(err) {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonSecretMissing,
				fmt.Sprintf("Secret %q named by %s does not exist in namespace %s", rf.name, rf.field, kb.Namespace))
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("get Secret %s: %w", rf.name, err)
		}
		if _, ok := s.Data[rf.key]; !ok {
			r.setProblem(kb, kcv1.ConditionValid, kcv1.ReasonSecretMissing,
				fmt.Sprintf("Secret %q named by %s has no key %q", rf.name, rf.field, rf.key))
			return false, nil
		}
	}
	kb.SetCondition(kcv1.ConditionValid, metav1.ConditionTrue, kcv1.ReasonValid, "the spec is valid and the Secrets it names exist")
	return true, nil
}

// ensureSidecar injects the sidecar into the workload's pod template, or replaces it when
// the storage or image changed. A template change rolls the pod, so it happens only then.
func (r *Reconciler) ensureSidecar(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, loc dataLocation) error {
	sc, err := buildSidecar(r.SidecarImage, &kb.Spec, w.Name(), loc)
	if err != nil {
		return err
	}
	if injected(w.Template(), sc) {
		return nil
	}
	before := w.Obj.DeepCopyObject().(client.Object)
	inject(w.Template(), sc)
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("inject sidecar into %s: %w", w, err)
	}
	log.FromContext(ctx).Info("injected sidecar", "workload", w.String(), "storage", describeStorage(&kb.Spec.Storage))
	r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "SidecarInjected", "InjectSidecar",
		"injected the kcbackup sidecar into %s, archiving to %s", w, describeStorage(&kb.Spec.Storage))
	kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarStarting,
		"sidecar injected into "+w.String()+"; waiting for the pod to roll")
	return nil
}

// sidecarClient returns a client for the sidecar of a running pod of w. ok is false, with
// SidecarReady False, when no pod runs yet.
func (r *Reconciler) sidecarClient(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, token string) (*apiclient.Client, bool, error) {
	return r.sidecarClientWith(ctx, kb, w, token, r.HTTPClient)
}

// sidecarClientWith is sidecarClient calling through hc (nil: apiclient's default).
func (r *Reconciler) sidecarClientWith(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, token string, hc *http.Client) (*apiclient.Client, bool, error) {
	pods, err := w.pods(ctx, r.Client)
	if err != nil {
		return nil, false, err
	}
	p := runningPod(pods)
	if p == nil {
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarStarting, "no running pod of "+w.String()+" yet")
		return nil, false, nil
	}
	return apiclient.New(r.SidecarEndpoint(p), token, hc), true, nil
}

// sidecarStatus calls GET /v1/status and records the outcome in SidecarReady.
func (r *Reconciler) sidecarStatus(ctx context.Context, kb *kcv1.KeycloakBackup, sc *apiclient.Client) (apiclient.Status, bool) {
	st, err := sc.Status(ctx)
	if err != nil {
		kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionFalse, kcv1.ReasonSidecarUnreachable, err.Error())
		return st, false
	}
	kb.SetCondition(kcv1.ConditionSidecarReady, metav1.ConditionTrue, kcv1.ReasonSidecarAnswering,
		fmt.Sprintf("sidecar answers: timeline %d, archived up to %s, streaming %t", st.Timeline, orDefault(st.ArchivedLSN, "nothing yet"), st.Streaming))
	return st, true
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

// scale sets the workload's replicas, emitting an event when it changed them.
func (r *Reconciler) scale(ctx context.Context, kb *kcv1.KeycloakBackup, w workload, n int32) error {
	if w.Replicas() == n {
		return nil
	}
	before := w.Obj.DeepCopyObject().(client.Object)
	from := w.Replicas()
	w.setReplicas(n)
	if err := r.Client.Patch(ctx, w.Obj, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("scale %s to %d: %w", w, n, err)
	}
	r.Recorder.Eventf(kb, w.Obj, corev1.EventTypeNormal, "Scaled", "Scale", "scaled %s from %d to %d replicas", w, from, n)
	return nil
}
