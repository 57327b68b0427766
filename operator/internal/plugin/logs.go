package plugin

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	kcv1 "github.com/kcbackup/kcbackup/api/v1alpha1"
	"github.com/kcbackup/kcbackup/operator/internal/controller"
)

func (e *env) logsCommand() *cobra.Command {
	var follow bool
	var tail int64
	var since string
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "The sidecar's log in every pod of the workload resource NAME protects, each line prefixed with its pod",
		Example: `  kubectl kcbackup logs keycloak-db
  kubectl kcbackup logs keycloak-db -f --tail 20`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := &corev1.PodLogOptions{Container: controller.SidecarContainerName, Follow: follow}
			if tail >= 0 {
				opts.TailLines = &tail
			}
			if since != "" {
				d, err := parseSince(since)
				if err != nil {
					return err
				}
				opts.SinceSeconds = &d
			}
			c, cfg, ns, err := e.connect()
			if err != nil {
				return err
			}
			kb, err := get(cmd.Context(), c, ns, args[0])
			if err != nil {
				return err
			}
			pods, err := workloadPods(cmd.Context(), c, ns, kb.Status.Instance)
			if err != nil {
				return err
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return err
			}
			return streamLogs(cmd.Context(), cs, ns, pods, opts, e.stdout)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&follow, "follow", "f", false, "keep streaming new lines")
	f.Int64Var(&tail, "tail", -1, "lines of each pod's log to show (-1: all)")
	f.StringVar(&since, "since", "", "only lines newer than this duration (5m, 1h)")
	return cmd
}

// workloadPods lists the pods of the workload a resource resolved, by the workload's own
// selector, sorted by name.
func workloadPods(ctx context.Context, c client.Client, ns string, ref *kcv1.WorkloadReference) ([]string, error) {
	if ref == nil {
		return nil, fmt.Errorf("the resource has not resolved its workload yet (status.instance is empty): see kubectl kcbackup status")
	}
	var sel *metav1.LabelSelector
	key := client.ObjectKey{Namespace: ns, Name: ref.Name}
	switch ref.Kind {
	case "StatefulSet":
		var s appsv1.StatefulSet
		if err := c.Get(ctx, key, &s); err != nil {
			return nil, fmt.Errorf("get StatefulSet %s/%s: %w", ns, ref.Name, err)
		}
		sel = s.Spec.Selector
	case "Deployment":
		var d appsv1.Deployment
		if err := c.Get(ctx, key, &d); err != nil {
			return nil, fmt.Errorf("get Deployment %s/%s: %w", ns, ref.Name, err)
		}
		sel = d.Spec.Selector
	default:
		return nil, fmt.Errorf("status.instance names a %q, expected a StatefulSet or a Deployment", ref.Kind)
	}
	ls, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return nil, fmt.Errorf("the selector of %s %s/%s: %w", ref.Kind, ns, ref.Name, err)
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabelsSelector{Selector: ls}); err != nil {
		return nil, fmt.Errorf("list the pods of %s %s/%s: %w", ref.Kind, ns, ref.Name, err)
	}
	var names []string
	for _, p := range pods.Items {
		names = append(names, p.Name)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("%s %s/%s has no pod", ref.Kind, ns, ref.Name)
	}
	sort.Strings(names)
	return names, nil
}

// parseSince parses --since as whole seconds.
func parseSince(s string) (int64, error) {
	d, err := time.ParseDuration(s)
	if err != nil || d < time.Second {
		return 0, usagef("invalid --since %q: expected a duration of at least 1s, like 5m or 1h", s)
	}
	return int64(d / time.Second), nil
}

// streamLogs copies each pod's sidecar log to w, line by line, prefixed "[pod] ".
func streamLogs(ctx context.Context, cs kubernetes.Interface, ns string, pods []string, opts *corev1.PodLogOptions, w io.Writer) error {
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make([]error, len(pods))
	for i, pod := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := cs.CoreV1().Pods(ns).GetLogs(pod, opts).Stream(ctx)
			if err != nil {
				errs[i] = fmt.Errorf("logs of container %s in pod %s/%s: %w", opts.Container, ns, pod, err)
				return
			}
			defer rc.Close()
			sc := bufio.NewScanner(rc)
			sc.Buffer(make([]byte, 64<<10), 1<<20)
			for sc.Scan() {
				mu.Lock()
				fmt.Fprintf(w, "[%s] %s\n", pod, sc.Text())
				mu.Unlock()
			}
			if err := sc.Err(); err != nil && ctx.Err() == nil {
				errs[i] = fmt.Errorf("logs of pod %s/%s: %w", ns, pod, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
