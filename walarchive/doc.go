// Package walarchive is kcbackup's library for the archive itself: LSNs and WAL file
// names, the archive's key layout, the checksummed and compressed object format, the
// archive identity that keeps two clusters apart, and opening a storage backend from a URL.
//
// It knows nothing of Kubernetes and never talks to PostgreSQL; the sidecar wires it to
// the server, and the operator never imports the parts that read WAL.
package walarchive
