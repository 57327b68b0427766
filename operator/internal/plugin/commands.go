package plugin

import (
	"context"
	"fmt"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
)

func (e *env) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status [NAME]",
		Short: "The KeycloakBackup resources of the namespace: phase, workload, recovery window, last backup, why not ready",
		Example: `  kubectl kcbackup status -n keycloak
  kubectl kcbackup status keycloak-db -o json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ns, err := e.connect()
			if err != nil {
				return err
			}
			var items []kcv1.KeycloakBackup
			if len(args) == 1 {
				kb, err := get(cmd.Context(), c, ns, args[0])
				if err != nil {
					return err
				}
				items = []kcv1.KeycloakBackup{*kb}
			} else {
				var l kcv1.KeycloakBackupList
				if err := c.List(cmd.Context(), &l, client.InNamespace(ns)); err != nil {
					return fmt.Errorf("list KeycloakBackups in namespace %s: %w", ns, err)
				}
				items = l.Items
				sort.Slice(items, func(i, j int) bool { return items[i].Name < items[j].Name })
			}
			if e.output == "json" {
				return e.printJSON(statusViews(items))
			}
			if len(items) == 0 {
				fmt.Fprintf(e.stderr, "no KeycloakBackup in namespace %s\n", ns)
				return nil
			}
			now := time.Now()
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tPHASE\tWORKLOAD\tWINDOW\tLAST BACKUP\tSTEP\tMESSAGE")
			for _, v := range statusViews(items) {
				window := "-"
				if v.WindowEarliest != nil {
					window = v.WindowEarliest.UTC().Format(time.RFC3339) + " .. " + v.WindowLatest.UTC().Format(time.RFC3339)
				}
				last := "-"
				if v.LastBackup != nil {
					last = age(*v.LastBackup, now) + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Kind, orDash(v.Phase), orDash(v.Workload), window, last,
					orDash(v.Step), orDash(v.Message))
			}
			return tw.Flush()
		},
	}
}

// statusView is one resource as status shows it (and -o json prints it).
type statusView struct {
	Name string `json:"name"`
	// Kind is what the resource asks for: schedule, backup or restore.
	Kind           string     `json:"kind"`
	Phase          string     `json:"phase,omitempty"`
	Workload       string     `json:"workload,omitempty"`
	WindowEarliest *time.Time `json:"windowEarliest,omitempty"`
	WindowLatest   *time.Time `json:"windowLatest,omitempty"`
	LastBackup     *time.Time `json:"lastBackup,omitempty"`
	RestoreTo      string     `json:"restoreTo,omitempty"`
	Step           string     `json:"step,omitempty"`
	// Instance is where a restore's new instance answers (host:port), Drill a drill's
	// figures, LastDrill the newest finished drill of a resource with spec.drill.
	Instance  string `json:"instance,omitempty"`
	RTO       string `json:"rto,omitempty"`
	RPO       string `json:"rpo,omitempty"`
	LastDrill string `json:"lastDrill,omitempty"`
	// Ready is the Ready condition's status, Reason and Message its reason and message.
	Ready   string `json:"ready,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
}

func statusViews(items []kcv1.KeycloakBackup) []statusView {
	out := make([]statusView, 0, len(items))
	for i := range items {
		kb := &items[i]
		v := statusView{Name: kb.Name, Kind: kindOf(kb), Phase: string(kb.Status.Phase), RestoreTo: kb.Spec.RestoreTo}
		if w := kb.Status.Instance; w != nil {
			v.Workload = w.Kind + "/" + w.Name
		}
		if w := kb.Status.RecoveryWindow; w != nil {
			e, l := w.Earliest.Time, w.Latest.Time
			v.WindowEarliest, v.WindowLatest = &e, &l
		}
		if t := kb.Status.LastBackupTime; t != nil {
			l := t.Time
			v.LastBackup = &l
		}
		if kb.IsRestore() && kb.Status.Restore != nil {
			v.Step = string(kb.Status.Restore.Step)
		}
		if rs := kb.Status.Restore; rs != nil && rs.Instance != nil && !rs.Instance.Removed {
			v.Instance = fmt.Sprintf("%s:%d", rs.Instance.Host, rs.Instance.Port)
		}
		if rs := kb.Status.Restore; rs != nil && rs.Drill != nil {
			if rs.Drill.RTO != nil {
				v.RTO = rs.Drill.RTO.Duration.String()
			}
			if rs.Drill.RPO != nil {
				v.RPO = rs.Drill.RPO.Duration.String()
			}
		}
		if d := kb.Status.Drill; d != nil && d.LastDrill != "" {
			v.LastDrill = d.LastDrill + " " + orDash(string(d.LastResult))
		}
		if c := kb.Condition(kcv1.ConditionReady); c != nil {
			v.Ready, v.Reason = string(c.Status), c.Reason
			// A clone's or drill's success says where it answers, or what the drill measured.
			if c.Status != metav1.ConditionTrue || kb.IsClone() {
				v.Message = c.Message
			}
		}
		out = append(out, v)
	}
	return out
}

// kindOf says what a resource asks for.
func kindOf(kb *kcv1.KeycloakBackup) string {
	switch {
	case kb.IsDrill():
		return "drill"
	case kb.IsClone():
		return "clone"
	case kb.IsRestore():
		return "restore"
	case kb.IsScheduled():
		return "schedule"
	}
	return "backup"
}

func (e *env) listCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "list NAME",
		Short: "The recovery ranges and base backups of a resource's archive (what a restore can reach)",
		Long: `list prints the archive's recovery ranges (every second of each can be restored to; a hole in
the WAL ends one range and the next backup starts another) and its base backups, as the
operator last read them from the sidecar.`,
		Example: `  kubectl kcbackup list keycloak-db
  kubectl kcbackup list keycloak-db -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, ns, err := e.connect()
			if err != nil {
				return err
			}
			kb, err := get(cmd.Context(), c, ns, args[0])
			if err != nil {
				return err
			}
			if e.output == "json" {
				return e.printJSON(struct {
					Ranges  []kcv1.RecoveryRange `json:"ranges"`
					Backups []kcv1.BackupRecord  `json:"backups"`
				}{orEmpty(kb.Status.RecoveryRanges), orEmpty(kb.Status.Backups)})
			}
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RANGE\tTIMELINE\tFROM\tTO\tENDS AT")
			for i, r := range kb.Status.RecoveryRanges {
				end := "the live end"
				if r.Hole {
					end = "a hole in the WAL"
				} else if i < len(kb.Status.RecoveryRanges)-1 {
					end = "the end of its timeline"
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\n", i+1, r.Timeline, r.Earliest.UTC().Format(time.RFC3339), r.Latest.UTC().Format(time.RFC3339), end)
			}
			if len(kb.Status.RecoveryRanges) == 0 {
				fmt.Fprintln(tw, "-\t-\t-\t-\tno range yet: the archive has no complete base backup")
			}
			fmt.Fprintln(tw)
			fmt.Fprintln(tw, "BACKUP\tTIMELINE\tSTARTED\tSTOPPED\tSIZE\tSTOP LSN")
			for _, b := range kb.Status.Backups {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", b.ID, b.Timeline, fmtTime(b.StartTime), fmtTime(b.StopTime), humanBytes(b.SizeBytes), orDash(b.StopLSN))
			}
			return tw.Flush()
		},
	}
}

func (e *env) backupCommand() *cobra.Command {
	var name string
	var waitFor bool
	cmd := &cobra.Command{
		Use:   "backup NAME",
		Short: "Take a base backup now into the archive of resource NAME (a new KeycloakBackup)",
		Long: `backup creates a one-off KeycloakBackup for the workload and archive of resource NAME: the
operator asks the sidecar of the primary for a base backup. The new resource says only
spec.from: NAME (or the archive's resource NAME itself names). With --wait it follows the
backup to its end and exits 1 if it failed.`,
		Example: `  kubectl kcbackup backup keycloak-db
  kubectl kcbackup backup keycloak-db --name before-upgrade --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, src, err := e.archiveSource(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			kb := derived(src, orDefault(name, args[0]+"-backup-"+time.Now().UTC().Format("20060102150405")))
			return e.submit(cmd.Context(), c, kb, waitFor, 0)
		},
	}
	cmd.Flags().StringVar(&name, "name", "", "name of the new KeycloakBackup (default NAME-backup-<UTC time>)")
	cmd.Flags().BoolVar(&waitFor, "wait", false, "wait until the backup completed or failed")
	return cmd
}

func (e *env) restoreCommand() *cobra.Command {
	var name, to, appSelector, into, intoNS, storageClass, size string
	var timeline int64
	var waitFor, noApp, keep bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restore NAME --to TIME|latest [--into INSTANCE]",
		Short: "Restore the workload of resource NAME to a time, in place or into a new instance (a new KeycloakBackup with restoreTo)",
		Long: `restore creates a KeycloakBackup that restores the workload of resource NAME to --to:
"latest" or an RFC 3339 time with a zone. The operator checks the target with the sidecar's
planner before it touches anything.

In place (without --into), it stops Keycloak, restores, and starts it again; the replaced
data directory is moved aside, never deleted.

With --into INSTANCE, production keeps running untouched: the operator makes a new
StatefulSet INSTANCE (one pod, from the workload's pod template) with its own claim
INSTANCE-data, restores into it, and reports where it answers (Service INSTANCE). It never
archives, and is deleted with the new KeycloakBackup unless --keep.

With --wait it follows the restore step by step and exits 1 if it was refused or failed.`,
		Example: `  kubectl kcbackup restore keycloak-db --to 2026-12-05T10:30:00Z -l app=keycloak --wait
  kubectl kcbackup restore keycloak-db --to latest --timeline 3
  kubectl kcbackup restore keycloak-db --to 2026-12-05T10:30:00Z --into yesterday --wait`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usagef("--to is required: 'latest' or an RFC 3339 time with a zone, like 2026-12-05T10:30:00Z")
			}
			if _, _, err := kcv1.ParseRestoreTarget(to); err != nil {
				return usagef("invalid --to %q: %v", to, err)
			}
			var inst *kcv1.RestoreInto
			if into != "" {
				if errs := validation.IsDNS1035Label(into); len(errs) > 0 || len(into) > 52 {
					return usagef("invalid --into %q: expected a DNS label of at most 52 characters (lowercase letters, digits, '-'), like yesterday", into)
				}
				if appSelector != "" || noApp {
					return usagef("--into restores into a new instance and stops nothing: drop -l and --allow-without-application")
				}
				if intoNS != "" {
					if errs := validation.IsDNS1123Label(intoNS); len(errs) > 0 {
						return usagef("invalid --into-namespace %q: expected a namespace name", intoNS)
					}
				}
				inst = &kcv1.RestoreInto{Name: into, Namespace: intoNS, Keep: keep}
				if storageClass != "" {
					inst.StorageClassName = &storageClass
				}
				if size != "" {
					q, err := resource.ParseQuantity(size)
					if err != nil || q.Sign() <= 0 {
						return usagef("invalid --size %q: expected a positive quantity such as 10Gi", size)
					}
					inst.Size = &q
				}
			} else if keep || storageClass != "" || size != "" || intoNS != "" {
				return usagef("--keep, --storage-class, --size and --into-namespace describe the new instance: they need --into")
			}
			var app *metav1.LabelSelector
			if appSelector != "" {
				sel, err := metav1.ParseToLabelSelector(appSelector)
				if err != nil || len(sel.MatchLabels)+len(sel.MatchExpressions) == 0 {
					return usagef("invalid --application-selector %q: expected labels of Keycloak's workload, like app=keycloak", appSelector)
				}
				app = sel
			}
			if timeline < 0 {
				return usagef("invalid --timeline %d: expected a timeline number (1 or more), or 0 for the newest", timeline)
			}
			c, src, err := e.archiveSource(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			kb := derived(src, orDefault(name, args[0]+"-restore-"+time.Now().UTC().Format("20060102150405")))
			kb.Spec.RestoreTo = to
			kb.Spec.ApplicationSelector = app
			if app == nil && inst == nil {
				kb.Spec.ApplicationSelector = src.Spec.ApplicationSelector.DeepCopy()
			}
			kb.Spec.Into = inst
			if timeline > 0 || noApp || timeout > 0 {
				kb.Spec.Restore = &kcv1.RestoreOptions{AllowWithoutApplication: noApp}
				if timeline > 0 {
					kb.Spec.Restore.Timeline = &timeline
				}
				if timeout > 0 {
					kb.Spec.Restore.Timeout = &metav1.Duration{Duration: timeout}
				}
			}
			return e.submit(cmd.Context(), c, kb, waitFor, timeout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&to, "to", "", "restore target: 'latest' or an RFC 3339 time with a zone (2026-12-05T10:30:00Z)")
	f.StringVar(&name, "name", "", "name of the new KeycloakBackup (default NAME-restore-<UTC time>)")
	f.Int64Var(&timeline, "timeline", 0, "timeline to recover along (default: the newest whose range holds the target)")
	f.StringVarP(&appSelector, "application-selector", "l", "", "labels of Keycloak's workload (or of its Keycloak resource's StatefulSet), stopped during the restore, like app=keycloak (default: NAME's)")
	f.BoolVar(&noApp, "allow-without-application", false, "restore although the resource selects no application to stop (spec.restore.allowWithoutApplication)")
	f.DurationVar(&timeout, "timeout", 0, "spec.restore.timeout (default: the operator's, 30m)")
	f.BoolVar(&waitFor, "wait", false, "follow the restore until it is done or failed")
	f.StringVar(&into, "into", "", "restore into a new instance of this name (StatefulSet, Service, claim INSTANCE-data) instead of in place")
	f.StringVar(&intoNS, "into-namespace", "", "with --into: make the instance in this namespace (it must accept restores from NAME's: docs/clones-and-drills.md)")
	f.BoolVar(&keep, "keep", false, "with --into: keep the new instance when its KeycloakBackup is deleted")
	f.StringVar(&storageClass, "storage-class", "", "with --into: the new claim's storage class (default: the data claim's)")
	f.StringVar(&size, "size", "", "with --into: the new claim's size, like 20Gi (default: the data claim's)")
	return cmd
}

func (e *env) drillCommand() *cobra.Command {
	var waitFor bool
	cmd := &cobra.Command{
		Use:   "drill NAME",
		Short: "Run a restore drill of the archive of resource NAME now",
		Long: `drill creates the KeycloakBackup of one restore drill of the archive of resource NAME, as
its spec.drill schedule would (with its check settings, or the defaults): the operator
marks production in one transaction (SHARE locks on the checked Keycloak tables, their row
counts), restores the archive to exactly that transaction into a throw-away instance,
checks it (promoted, marker committed, equal counts, amcheck), records the RTO and RPO in
the drill's status, and removes the instance. Production keeps running. With --wait it
follows the drill and exits 1 when it failed.`,
		Example: `  kubectl kcbackup drill keycloak-db --wait
  kubectl kcbackup status keycloak-db-drill-20261205150000 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, src, err := e.archiveSource(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			archive := src
			if src.Spec.From != "" {
				if archive, err = get(cmd.Context(), c, src.Namespace, src.Spec.From); err != nil {
					return err
				}
			}
			kb := kcv1.NewDrill(archive, time.Now())
			kb.Labels["app.kubernetes.io/created-by"] = "kubectl-kcbackup"
			return e.submit(cmd.Context(), c, kb, waitFor, kb.Spec.RestoreTimeout())
		},
	}
	cmd.Flags().BoolVar(&waitFor, "wait", false, "follow the drill until it passed or failed")
	return cmd
}

// archiveSource connects and reads the resource NAME a backup or restore derives from; a
// restore cannot be one (it names no archive of its own).
func (e *env) archiveSource(ctx context.Context, name string) (client.Client, *kcv1.KeycloakBackup, error) {
	c, _, ns, err := e.connect()
	if err != nil {
		return nil, nil, err
	}
	src, err := get(ctx, c, ns, name)
	if err != nil {
		return nil, nil, err
	}
	if src.IsRestore() {
		return nil, nil, usagef("KeycloakBackup %q is a restore: name the resource that holds the archive's settings", src.Name)
	}
	return c, src, nil
}

// derived is a new resource for the workload and archive of src, by spec.from: it names
// src, or the archive's resource src itself names (a record, a restore, a one-off backup).
func derived(src *kcv1.KeycloakBackup, name string) *kcv1.KeycloakBackup {
	from := src.Name
	if src.Spec.From != "" {
		from = src.Spec.From
	}
	return &kcv1.KeycloakBackup{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: src.Namespace,
			Labels: map[string]string{"app.kubernetes.io/created-by": "kubectl-kcbackup"}},
		Spec: kcv1.KeycloakBackupSpec{From: from},
	}
}

// submit creates kb and, with waitFor, follows it until it ends: 0 when it completed, an
// error naming the reason otherwise. The wait is bounded by the restore's timeout (or the
// operator's default) plus a margin, for a one-off backup by the same.
func (e *env) submit(ctx context.Context, c client.Client, kb *kcv1.KeycloakBackup, waitFor bool, timeout time.Duration) error {
	if err := c.Create(ctx, kb); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return usagef("a KeycloakBackup named %s already exists in namespace %s: pass another --name", kb.Name, kb.Namespace)
		}
		return fmt.Errorf("create KeycloakBackup %s/%s: %w", kb.Namespace, kb.Name, err)
	}
	fmt.Fprintf(e.stderr, "keycloakbackup.keycloak.org/%s created\n", kb.Name)
	if !waitFor {
		if e.output == "json" {
			return e.printJSON(statusViews([]kcv1.KeycloakBackup{*kb}))
		}
		fmt.Fprintf(e.stdout, "%s\n", kb.Name)
		return nil
	}
	if timeout <= 0 {
		timeout = kb.Spec.RestoreTimeout()
	}
	var last kcv1.KeycloakBackup
	lastLine := ""
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout+5*time.Minute, true, func(ctx context.Context) (bool, error) {
		if err := c.Get(ctx, client.ObjectKeyFromObject(kb), &last); err != nil {
			return false, nil // transient: the API server is asked again
		}
		v := statusViews([]kcv1.KeycloakBackup{last})[0]
		line := strings.TrimSpace(fmt.Sprintf("%s %s %s", v.Phase, v.Step, v.Message))
		if line != lastLine && e.output != "json" {
			fmt.Fprintf(e.stderr, "%s  %s\n", time.Now().UTC().Format(time.TimeOnly), line)
			lastLine = line
		}
		return last.IsTerminal(), nil
	})
	if e.output == "json" {
		if perr := e.printJSON(statusViews([]kcv1.KeycloakBackup{last})); perr != nil {
			return perr
		}
	}
	if err != nil {
		return fmt.Errorf("KeycloakBackup %s/%s did not finish within %s (phase %q); it goes on: follow it with kubectl kcbackup status %s",
			kb.Namespace, kb.Name, timeout+5*time.Minute, last.Status.Phase, kb.Name)
	}
	if last.Status.Phase == kcv1.PhaseFailed {
		c := last.Condition(kcv1.ConditionReady)
		why := "no reason recorded"
		if c != nil {
			why = c.Reason + ": " + c.Message
		}
		return fmt.Errorf("KeycloakBackup %s/%s failed: %s", kb.Namespace, kb.Name, why)
	}
	if e.output != "json" {
		fmt.Fprintf(e.stdout, "%s %s\n", kb.Name, last.Status.Phase)
	}
	return nil
}

// get reads one KeycloakBackup, with an error a user can act on.
func get(ctx context.Context, c client.Client, ns, name string) (*kcv1.KeycloakBackup, error) {
	var kb kcv1.KeycloakBackup
	err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &kb)
	if apierrors.IsNotFound(err) {
		return nil, usagef("no KeycloakBackup %q in namespace %s (list them with kubectl kcbackup status -n %s)", name, ns, ns)
	}
	if err != nil {
		return nil, fmt.Errorf("get KeycloakBackup %s/%s: %w", ns, name, err)
	}
	return &kb, nil
}

func orDash(s string) string { return orDefault(s, "-") }

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func fmtTime(t *metav1.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// humanBytes formats a size in binary units.
func humanBytes(n int64) string {
	if n <= 0 {
		return "-"
	}
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
