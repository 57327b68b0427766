package streamer

import "github.com/kcbackup/kcbackup/walarchive"

// ackPositions is what the sidecar may report to the server in a standby status update,
// given the end of the WAL this session has made durable in the archive (contiguous from
// where the archive's WAL begins), the end of the WAL received on this connection, and the
// slot's restart_lsn when the session started (floor).
//
// The flush position is what PostgreSQL releases synchronous commits on (and, for a
// physical slot, moves restart_lsn to); the write position is what
// synchronous_commit = remote_write waits for. Both are the archived position, so every
// synchronous_commit level that waits for a standby waits for the archive. Until the
// session has archived up to the floor, the positions are 0 (InvalidXLogRecPtr): the server
// then moves neither the slot (reporting less than restart_lsn would move it backwards) nor
// any waiting commit (reporting the floor would claim WAL this archive never stored).
func ackPositions(archived, received, floor walarchive.LSN) (write, flush walarchive.LSN) {
	flush = min(archived, received)
	if flush < floor || flush == 0 {
		return 0, 0
	}
	return flush, flush
}
