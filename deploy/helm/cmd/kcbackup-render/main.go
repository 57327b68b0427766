// Command kcbackup-render renders the kcbackup chart as `helm template` would, with the helm
// Go module the chart's tests use (no helm binary): test/cluster installs the chart with it.
//
//	go run ./cmd/kcbackup-render --release kcb --namespace kcbackup-system --values values.yaml > kcbackup.yaml
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"sigs.k8s.io/yaml"
)

func main() {
	chartDir := flag.String("chart", "kcbackup", "the chart's directory")
	release := flag.String("release", "kcb", "the release name")
	namespace := flag.String("namespace", "kcbackup-system", "the release namespace")
	valuesFile := flag.String("values", "", "a YAML file of values (optional)")
	crds := flag.Bool("include-crds", false, "print the chart's CRDs first")
	kube := flag.String("kube-version", "v1.37.2", "the Kubernetes version templates see")
	flag.Parse()
	if err := run(*chartDir, *release, *namespace, *valuesFile, *kube, *crds); err != nil {
		fmt.Fprintln(os.Stderr, "kcbackup-render:", err)
		os.Exit(1)
	}
}

func run(chartDir, release, namespace, valuesFile, kube string, crds bool) error {
	ch, err := loader.LoadDir(chartDir)
	if err != nil {
		return fmt.Errorf("load chart %s: %w", chartDir, err)
	}
	vals := map[string]any{}
	if valuesFile != "" {
		b, err := os.ReadFile(valuesFile)
		if err != nil {
			return err
		}
		if err := yaml.Unmarshal(b, &vals); err != nil {
			return fmt.Errorf("values %s: %w", valuesFile, err)
		}
	}
	caps := common.DefaultCapabilities.Copy()
	v, err := common.ParseKubeVersion(kube)
	if err != nil {
		return fmt.Errorf("--kube-version %q: %w", kube, err)
	}
	caps.KubeVersion = *v
	top, err := util.ToRenderValues(ch, vals, common.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}, caps)
	if err != nil {
		return err
	}
	files, err := engine.Render(ch, top)
	if err != nil {
		return err
	}
	if crds {
		for _, c := range ch.CRDObjects() {
			fmt.Printf("---\n# Source: %s\n%s\n", c.Filename, strings.TrimSpace(string(c.File.Data)))
		}
	}
	names := make([]string, 0, len(files))
	for name := range files {
		if strings.HasSuffix(name, ".yaml") && strings.TrimSpace(files[name]) != "" {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Printf("---\n# Source: %s\n%s\n", name, strings.TrimSpace(files[name]))
	}
	return nil
}
