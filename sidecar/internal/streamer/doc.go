// Package streamer is the sidecar's archiving daemon: it streams WAL from PostgreSQL over
// the physical replication protocol through a replication slot, spools it locally, uploads
// complete segments and the live tail (as a .partial) to the archive, and acknowledges to
// the server only WAL that is durable in the archive.
//
// The invariants it keeps (see docs/reliability.md):
//  1. The flush position sent to PostgreSQL never passes the end of the WAL durable in the
//     archive, so the slot keeps on the server everything not yet archived. After any crash
//     streaming restarts from the start of the segment holding the slot's restart_lsn.
//  2. A segment is stored under its final name only when all of its bytes were received; a
//     tail or a segment cut short by the end of a timeline is stored as <segment>.partial,
//     and a partial is only ever replaced by a longer one.
//  3. A timeline's history file is archived before any of its WAL.
//  4. The spool is a cache: it is emptied at start, because the slot holds everything that
//     was not archived.
package streamer
