// Package app assembles the operator: it validates the configuration, builds the
// controller-runtime manager with the KeycloakBackup reconciler, and runs it until the
// context ends.
package app
