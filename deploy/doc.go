// Package deploy holds the kustomize base that installs kcbackup (the KeycloakBackup CRD,
// the operator and its RBAC, and monitoring) and example resources. It has no Go code; its
// tests check the manifests against a real API server.
package deploy
