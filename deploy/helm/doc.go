// Package helm holds the tests of the kcbackup Helm chart (kcbackup/): helm's own linter,
// renders with default and other values, and the checks that keep the chart equal to
// deploy/ (the CRD, the operator's RBAC, the monitoring rules and dashboard).
//
// It is a Go module of its own: helm.sh/helm/v4 brings about a hundred modules (and
// k8s.io/apiserver) that the kcbackup binaries do not need, and a module apart keeps them
// out of the product's go.mod. make test runs it (cd deploy/helm && go test ./...).
package helm
