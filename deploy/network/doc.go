// Package network holds no code: it is the directory of the NetworkPolicies that keep the
// kcbackup sidecar's API port (8008) reachable over the network by the operator alone
// (sidecar-api.yaml) and, optionally, by Prometheus (prometheus-scrape.yaml).
//
// The tests parse the policies strictly, evaluate them with NetworkPolicy's semantics
// against the pods the operator labels and the operator Deployment of deploy/manager, and
// create them in a real API server.
package network
