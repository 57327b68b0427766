// Package olm holds the tests of the OLM bundle (bundle/): the operator-framework's own
// bundle validators (github.com/operator-framework/api/pkg/validation, the library behind
// operator-sdk bundle validate), and the checks that keep the bundle equal to deploy/ (the
// CRD, the operator's RBAC and Deployment) and its images at the CSV's version.
//
// It is a Go module of its own: operator-framework/api v0.31.0 is built against
// k8s.io v0.32 and controller-runtime v0.20, older than the product's (k8s.io v0.37,
// controller-runtime v0.25); in one module they would be raised to the product's versions.
// make test runs it (cd deploy/olm && go test ./...).
package olm
