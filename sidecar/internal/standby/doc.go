// Package standby decides, for the sidecar, whether its PostgreSQL is the primary or a
// streaming standby, and runs the archiver only on the primary.
//
// Every pod of a replicated PostgreSQL gets a sidecar, and all of them point at one
// archive. Only the primary's sidecar archives and takes backups; a standby's sidecar
// stands by. Standing by is not idle: it keeps a physical replication slot on the standby,
// advanced to where the archive ends, so that when the standby is promoted every byte after
// the archive's end is still on it, and its sidecar, now the primary's, streams on from
// there without a hole (docs/replicas.md).
//
// The package owns the role probe (pg_is_in_recovery()), the standby's slot, and the
// Supervisor that starts and stops the streamer as the role changes. It writes nothing into
// the archive itself: the streamer does, with the archive's one-writer claim.
package standby
