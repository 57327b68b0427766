package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/operator/internal/app"
	kccontroller "github.com/kcbackup/kcbackup/operator/internal/controller"
	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

// env is one test's world: its own namespace, its own operator (manager, fake clock,
// metrics registry) and a fake sidecar API standing in for the kcbackup daemon.
type env struct {
	t       *testing.T
	ctx     context.Context
	c       client.Client
	ns      string
	clock   *clocktesting.FakeClock
	sidecar *fakeSidecar
	reg     *prometheus.Registry
	// reconciles counts the reconciler's reads of a KeycloakBackup: one per Reconcile call.
	reconciles atomic.Int64
	// r is the running reconciler; tests build their own copies from it.
	r *kccontroller.Reconciler
}

// countingReader counts the Gets of KeycloakBackups through it.
type countingReader struct {
	client.Reader
	n *atomic.Int64
}

func (c countingReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if _, ok := obj.(*kcv1.KeycloakBackup); ok {
		c.n.Add(1)
	}
	return c.Reader.Get(ctx, key, obj, opts...)
}

type countingClient struct {
	client.Client
	n *atomic.Int64
}

func (c countingClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	return countingReader{c.Client, c.n}.Get(ctx, key, obj, opts...)
}

// newEnv starts an operator for one test; tune changes the reconciler before it starts.
func newEnv(t *testing.T, cfg *rest.Config, tune ...func(r *kccontroller.Reconciler)) *env {
	t.Helper()
	return newEnvAs(t, cfg, nil, tune...)
}

// newEnvAs is newEnv with the operator's manager talking to the API server through the
// config as returns for the test's namespace (nil: cfg itself, the administrator); the test
// itself keeps cfg.
func newEnvAs(t *testing.T, cfg *rest.Config, as func(c client.Client, ns string) *rest.Config, tune ...func(r *kccontroller.Reconciler)) *env {
	t.Helper()
	scheme, err := app.NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	e := &env{t: t, ctx: ctx, c: c, ns: "t-" + rand.String(8), clock: clocktesting.NewFakeClock(time.Now().UTC()), reg: prometheus.NewRegistry()}
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}); err != nil {
		t.Fatal(err)
	}
	e.sidecar = newFakeSidecar(t, func() string {
		var s corev1.Secret
		if err := c.Get(ctx, client.ObjectKey{Namespace: e.ns, Name: kccontroller.TokenSecretName("postgres")}, &s); err != nil {
			return ""
		}
		return string(s.Data[kccontroller.TokenKey])
	})

	mgrCfg := cfg
	if as != nil {
		mgrCfg = as(c, e.ns)
	}
	mgr, err := ctrl.NewManager(mgrCfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
		Cache:                  cache.Options{DefaultNamespaces: map[string]cache.Config{e.ns: {}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := kccontroller.NewMetrics(e.reg)
	if err != nil {
		t.Fatal(err)
	}
	r := &kccontroller.Reconciler{
		Client:          countingClient{mgr.GetClient(), &e.reconciles},
		APIReader:       countingReader{mgr.GetAPIReader(), &e.reconciles},
		Recorder:        mgr.GetEventRecorder("kcbackup-operator"),
		Clock:           e.clock,
		Metrics:         m,
		SidecarImage:    "registry.example/kcbackup:test",
		SidecarEndpoint: func(*corev1.Pod) string { return e.sidecar.srv.URL },
		PollInterval:    100 * time.Millisecond,
		RetryInterval:   200 * time.Millisecond,
		MaxScheduleWait: 100 * time.Millisecond,
	}
	for _, f := range tune {
		f(r)
	}
	e.r = r
	if err := r.SetupWithManager(mgr, controller.Options{SkipNameValidation: ptr.To(true)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("manager: %v", err)
		}
	})
	return e
}

// eventually polls cond until it holds or 20 seconds pass.
func (e *env) eventually(what string, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	last := ""
	for time.Now().Before(deadline) {
		ok, msg := cond()
		if ok {
			return
		}
		last = msg
		time.Sleep(50 * time.Millisecond)
	}
	e.t.Fatalf("timed out waiting for %s; last seen: %s", what, last)
}

// consistently checks that cond holds for d.
func (e *env) consistently(what string, d time.Duration, cond func() (bool, string)) {
	e.t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok, msg := cond(); !ok {
			e.t.Fatalf("%s stopped holding: %s", what, msg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (e *env) create(obj client.Object) {
	e.t.Helper()
	obj.SetNamespace(e.ns)
	if err := e.c.Create(e.ctx, obj); err != nil {
		e.t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func (e *env) kb(name string) *kcv1.KeycloakBackup {
	e.t.Helper()
	kb := &kcv1.KeycloakBackup{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, kb); err != nil {
		e.t.Fatalf("get KeycloakBackup %s: %v", name, err)
	}
	return kb
}

// waitPhase waits for the resource to reach phase and returns it.
func (e *env) waitPhase(name string, phase kcv1.Phase) *kcv1.KeycloakBackup {
	e.t.Helper()
	var kb *kcv1.KeycloakBackup
	e.eventually(fmt.Sprintf("%s to reach phase %s", name, phase), func() (bool, string) {
		kb = e.kb(name)
		return kb.Status.Phase == phase, describe(kb)
	})
	return kb
}

// waitCondition waits for a condition with the given status and reason.
func (e *env) waitCondition(name, typ string, status metav1.ConditionStatus, reason string) *kcv1.KeycloakBackup {
	e.t.Helper()
	var kb *kcv1.KeycloakBackup
	e.eventually(fmt.Sprintf("%s condition %s=%s (%s)", name, typ, status, reason), func() (bool, string) {
		kb = e.kb(name)
		c := kb.Condition(typ)
		return c != nil && c.Status == status && c.Reason == reason && c.ObservedGeneration == kb.Generation, describe(kb)
	})
	return kb
}

func describe(kb *kcv1.KeycloakBackup) string {
	b, _ := json.Marshal(kb.Status)
	return string(b)
}

// poke changes an annotation so the operator reconciles the resource again.
func (e *env) poke(name string) {
	e.t.Helper()
	kb := e.kb(name)
	patch := client.MergeFrom(kb.DeepCopy())
	if kb.Annotations == nil {
		kb.Annotations = map[string]string{}
	}
	kb.Annotations["test/poke"] = time.Now().String()
	if err := e.c.Patch(e.ctx, kb, patch); err != nil {
		e.t.Fatal(err)
	}
}

// waitEvent waits for an Event with the given reason about the named resource.
func (e *env) waitEvent(name, reason string) {
	e.t.Helper()
	e.eventually("event "+reason+" on "+name, func() (bool, string) {
		var evs eventsv1.EventList
		if err := e.c.List(e.ctx, &evs, client.InNamespace(e.ns)); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, ev := range evs.Items {
			if ev.Regarding.Name == name && ev.Reason == reason {
				return true, ""
			}
			seen = append(seen, ev.Reason)
		}
		return false, strings.Join(seen, ",")
	})
}

func (e *env) gauge(metric, name string) float64 {
	e.t.Helper()
	g, _, ok := e.sample(metric, map[string]string{"name": name})
	if !ok {
		return -1
	}
	return g
}

// counter returns the value of a counter with the resource's labels and reason, or -1.
func (e *env) counter(metric, name, reason string) float64 {
	e.t.Helper()
	_, c, ok := e.sample(metric, map[string]string{"name": name, "reason": reason})
	if !ok {
		return -1
	}
	return c
}

// sample returns the gauge and counter values of the series of metric in this test's
// namespace with the labels want.
func (e *env) sample(metric string, want map[string]string) (gauge, counter float64, ok bool) {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != metric {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range m.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			if l["namespace"] != e.ns {
				continue
			}
			for k, v := range want {
				if l[k] != v {
					continue series
				}
			}
			return m.GetGauge().GetValue(), m.GetCounter().GetValue(), true
		}
	}
	return 0, 0, false
}

// postgresDeployment is a PostgreSQL Deployment whose data lies on claim postgres-data.
func postgresDeployment(name string, labels map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: optedIn(labels)},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](1),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": name}},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"pod": name}},
				Spec: corev1.PodSpec{
					SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr.To[int64](999), FSGroup: ptr.To[int64](999)},
					Containers: []corev1.Container{{
						Name: "postgres", Image: "postgres:17",
						Env:          []corev1.EnvVar{{Name: "PGDATA", Value: "/var/lib/postgresql/data/pgdata"}},
						VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/var/lib/postgresql/data"}},
					}},
					Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
						PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name + "-data"}}}},
				},
			},
		},
	}
}

// optedIn returns labels with the opt-in label added, as a workload the operator may act on
// carries it.
func optedIn(labels map[string]string) map[string]string {
	out := map[string]string{kccontroller.OptInLabel: kccontroller.OptInValue}
	for k, v := range labels {
		out[k] = v
	}
	return out
}

// appDeployment is a Keycloak-like Deployment.
func appDeployment(name string, replicas int32) *appsv1.Deployment {
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: optedIn(map[string]string{"app": "keycloak"})},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"pod": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"pod": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "keycloak", Image: "quay.io/keycloak/keycloak"}}},
			},
		},
	}
}

// runPod plays the kubelet: it creates a running pod with an IP for the workload's pods.
func (e *env) runPod(name string, podLabels map[string]string) {
	e.t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: e.ns, Labels: podLabels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: "busybox"}}},
	}
	if err := e.c.Create(e.ctx, p); err != nil {
		e.t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "127.0.0.1", PodIPs: []corev1.PodIP{{IP: "127.0.0.1"}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if err := e.c.Status().Update(e.ctx, p); err != nil {
		e.t.Fatal(err)
	}
}

// deletePods plays the controllers that remove the pods of a workload scaled to zero.
func (e *env) deletePods(podLabels map[string]string) {
	e.t.Helper()
	if err := e.c.DeleteAllOf(e.ctx, &corev1.Pod{}, client.InNamespace(e.ns), client.MatchingLabels(podLabels),
		client.GracePeriodSeconds(0)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) deployment(name string) *appsv1.Deployment {
	e.t.Helper()
	d := &appsv1.Deployment{}
	if err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, d); err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) waitReplicas(name string, n int32) {
	e.t.Helper()
	e.eventually(fmt.Sprintf("Deployment %s scaled to %d", name, n), func() (bool, string) {
		d := e.deployment(name)
		return *d.Spec.Replicas == n, fmt.Sprint(*d.Spec.Replicas)
	})
}

// sidecarOf returns the injected sidecar of a Deployment, or nil.
func sidecarOf(d *appsv1.Deployment) *corev1.Container {
	for i, c := range d.Spec.Template.Spec.InitContainers {
		if c.Name == kccontroller.SidecarContainerName {
			return &d.Spec.Template.Spec.InitContainers[i]
		}
	}
	return nil
}

// assertUntouched checks that nothing was done to the postgres Deployment: no sidecar, no token.
func (e *env) assertUntouched(name string) {
	e.t.Helper()
	if sc := sidecarOf(e.deployment(name)); sc != nil {
		e.t.Errorf("Deployment %s got a sidecar although the resource is invalid", name)
	}
	var s corev1.Secret
	err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: kccontroller.TokenSecretName(name)}, &s)
	if !apierrors.IsNotFound(err) {
		e.t.Errorf("token Secret of %s exists (err %v) although the resource is invalid", name, err)
	}
}

func (e *env) setJobCondition(name string, succeeded bool) {
	e.t.Helper()
	job := &batchv1.Job{}
	e.eventually("restore Job "+name, func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, job)
		return err == nil, fmt.Sprint(err)
	})
	now := metav1.Now()
	job.Status.StartTime = &now
	if succeeded {
		job.Status.Succeeded = 1
		job.Status.CompletionTime = &now
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobSuccessCriteriaMet, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: now, LastProbeTime: now},
		}
	} else {
		job.Status.Failed = 1
		job.Status.Conditions = []batchv1.JobCondition{
			{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now, LastProbeTime: now},
			{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: "BackoffLimitExceeded", LastTransitionTime: now, LastProbeTime: now},
		}
	}
	if err := e.c.Status().Update(e.ctx, job); err != nil {
		e.t.Fatalf("set Job %s status: %v", name, err)
	}
}

// refuseJob plays the Job controller and the kubelet for a restore Job whose container exited
// with ExitRestoreUntouched: a pod with the termination message, and the Failed condition
// the pod failure policy sets.
func (e *env) refuseJob(name, message string) {
	e.t.Helper()
	job := &batchv1.Job{}
	e.eventually("restore Job "+name, func() (bool, string) {
		err := e.c.Get(e.ctx, client.ObjectKey{Namespace: e.ns, Name: name}, job)
		return err == nil, fmt.Sprint(err)
	})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name + "-x1", Namespace: e.ns, Labels: map[string]string{batchv1.JobNameLabel: name}},
		Spec:       corev1.PodSpec{RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: "restore", Image: "kcbackup"}}},
	}
	if err := e.c.Create(e.ctx, pod); err != nil {
		e.t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "restore", Image: "kcbackup", ImageID: "kcbackup",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 4, Reason: "Error", Message: message}},
	}}}
	if err := e.c.Status().Update(e.ctx, pod); err != nil {
		e.t.Fatal(err)
	}
	now := metav1.Now()
	msg := fmt.Sprintf("Container restore for pod %s/%s failed with exit code 4 matching FailJob rule at index 0", e.ns, pod.Name)
	job.Status.StartTime = &now
	job.Status.Failed = 1
	job.Status.Conditions = []batchv1.JobCondition{
		{Type: batchv1.JobFailureTarget, Status: corev1.ConditionTrue, Reason: batchv1.JobReasonPodFailurePolicy, Message: msg, LastTransitionTime: now, LastProbeTime: now},
		{Type: batchv1.JobFailed, Status: corev1.ConditionTrue, Reason: batchv1.JobReasonPodFailurePolicy, Message: msg, LastTransitionTime: now, LastProbeTime: now},
	}
	if err := e.c.Status().Update(e.ctx, job); err != nil {
		e.t.Fatalf("set Job %s status: %v", name, err)
	}
}

// fakeSidecar serves the sidecar API from memory and checks the bearer token against the
// token Secret, as the real sidecar does.
type fakeSidecar struct {
	srv   *httptest.Server
	token func() string

	mu        sync.Mutex
	status    apiclient.Status
	window    *apiclient.RecoveryWindow
	jobs      map[string]*apiclient.BackupJob
	started   int
	failNext  bool // the next backup fails
	holdNext  bool // backups stay running until this is cleared
	prunes    []apiclient.PruneRequest
	badTokens int
	// calls counts requests per "METHOD path".
	calls map[string]int
	// movingWindow makes the catalog's window end now at each call, as partial uploads do;
	// listing then takes catalogLatency, as a full listing of a real archive does.
	movingWindow   bool
	catalogLatency time.Duration
	// cleanups are the Keycloak clean-up requests; schemaMismatch makes them answer 422.
	cleanups       []apiclient.KeycloakCleanupRequest
	schemaMismatch bool
	// catalogDown makes GET /v1/backups answer 503, as a sidecar whose store fails does.
	catalogDown bool
	// plans are the dry-run plan requests; planRefusal makes them answer 422 with it,
	// planDown 503, as the real planner does for a refusal and for a store that fails.
	plans       []apiclient.RestorePlanRequest
	planRefusal string
	planDown    bool
}

func newFakeSidecar(t *testing.T, token func() string) *fakeSidecar {
	f := &fakeSidecar{token: token, jobs: map[string]*apiclient.BackupJob{}, calls: map[string]int{},
		status: apiclient.Status{SystemIdentifier: "7300000000000000001", Timeline: 1, ServerFlushLSN: "0/3000000",
			ArchivedLSN: "0/3000000", StorageUp: true, Streaming: true}}
	now := time.Now().UTC()
	f.window = &apiclient.RecoveryWindow{Earliest: now.Add(-24 * time.Hour), Latest: now}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// complete ends a running backup job successfully (f.mu held).
func (f *fakeSidecar) complete(j *apiclient.BackupJob) {
	stop := time.Now().UTC()
	j.State = apiclient.StateCompleted
	j.Backup = &apiclient.BackupInfo{ID: j.ID, StartTime: j.StartedAt, StopTime: stop, StartLSN: "0/4000028",
		StopLSN: "0/4000100", Timeline: f.status.Timeline, SizeBytes: 4096, DataBytes: 40960}
	f.window.Latest = stop
}

func (f *fakeSidecar) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	reply := func(code int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
	f.calls[r.Method+" "+r.URL.Path]++
	if tok := f.token(); tok == "" || r.Header.Get("Authorization") != "Bearer "+tok {
		f.badTokens++
		reply(http.StatusUnauthorized, apiclient.ErrorBody{Error: "missing or wrong bearer token"})
		return
	}
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/v1/status":
		reply(http.StatusOK, f.status)
	case r.Method == http.MethodPost && r.URL.Path == "/v1/backups":
		for _, j := range f.jobs {
			// A real backup ends by itself, followed or not (an operator whose status
			// write failed after its POST forgot the ID): one nobody followed for 2 s ends.
			if j.State == apiclient.StateRunning && !f.holdNext && !f.failNext && time.Since(j.StartedAt) > 2*time.Second {
				f.complete(j)
			}
			if j.State == apiclient.StateRunning {
				reply(http.StatusConflict, apiclient.ErrorBody{Error: "a backup is already running", ID: j.ID})
				return
			}
		}
		f.started++
		id := fmt.Sprintf("backup-%d", f.started)
		j := &apiclient.BackupJob{ID: id, State: apiclient.StateRunning, StartedAt: time.Now().UTC()}
		f.jobs[id] = j
		reply(http.StatusAccepted, j)
	case r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/v1/backups/"):
		id := strings.TrimPrefix(r.URL.Path, "/v1/backups/")
		j, ok := f.jobs[id]
		if !ok {
			reply(http.StatusNotFound, apiclient.ErrorBody{Error: "no backup " + id})
			return
		}
		if j.State == apiclient.StateRunning && !f.holdNext {
			if f.failNext {
				j.State, j.Error = apiclient.StateFailed, "pg_backup_start: permission denied"
			} else {
				f.complete(j)
			}
		}
		reply(http.StatusOK, j)
	case r.Method == http.MethodGet && r.URL.Path == "/v1/backups" && f.catalogDown:
		reply(http.StatusServiceUnavailable, apiclient.ErrorBody{Error: "list archive: storage unavailable"})
	case r.Method == http.MethodGet && r.URL.Path == "/v1/backups":
		if f.movingWindow {
			f.mu.Unlock()
			time.Sleep(f.catalogLatency) // the latency simulated, not a wait of the test
			f.mu.Lock()
			f.window.Latest = time.Now().UTC()
		}
		reply(http.StatusOK, apiclient.Catalog{Window: f.window, Timelines: []uint32{f.status.Timeline}})
	case r.Method == http.MethodPost && r.URL.Path == "/v1/restore-plan":
		var req apiclient.RestorePlanRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.plans = append(f.plans, req)
		switch {
		case f.planDown:
			reply(http.StatusServiceUnavailable, apiclient.ErrorBody{Error: "cannot plan a restore now: list wal/: storage unavailable"})
		case f.planRefusal != "":
			reply(http.StatusUnprocessableEntity, apiclient.ErrorBody{Error: f.planRefusal})
		default:
			reply(http.StatusOK, apiclient.RestorePlan{BackupID: "backup-1", BackupStopTime: f.window.Earliest, Timeline: f.status.Timeline,
				Stop: "time", Window: *f.window})
		}
	case r.Method == http.MethodPost && r.URL.Path == "/v1/prune":
		var req apiclient.PruneRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.prunes = append(f.prunes, req)
		reply(http.StatusOK, apiclient.PruneResult{RemovedBackups: []string{}, RemovedWALObjects: 0})
	case r.Method == http.MethodPost && r.URL.Path == "/v1/keycloak/cleanup":
		var req apiclient.KeycloakCleanupRequest
		_ = json.NewDecoder(r.Body).Decode(&req)
		f.cleanups = append(f.cleanups, req)
		if f.schemaMismatch {
			reply(http.StatusUnprocessableEntity, apiclient.ErrorBody{Error: "not the Keycloak schema expected: no table offline_user_session"})
			return
		}
		reply(http.StatusOK, apiclient.KeycloakCleanupResult{Database: req.Database, Sessions: req.Sessions,
			JGroupsPingRows: 2, UserSessionRows: 3, ClientSessionRows: 4})
	default:
		reply(http.StatusNotFound, apiclient.ErrorBody{Error: "no route " + r.Method + " " + r.URL.Path})
	}
}

func (f *fakeSidecar) with(fn func(f *fakeSidecar)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeSidecar) startedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.started
}

// callCount returns how many requests of "METHOD path" the sidecar answered.
func (f *fakeSidecar) callCount(route string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[route]
}
