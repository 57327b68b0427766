// Package history is a randomized history checker: a seeded random sequence of operations
// (ledger writes, backups, sidecar kills, server crashes, storage outages, promotions,
// in-place restores, prunes, WAL holes, a restored copy archiving beside production, WAL
// written across segment boundaries through a slow store while the archive is listed, a
// sidecar crash between tail parts that leaves parts past a gap in the archive) on a
// real PostgreSQL, a kcbackup sidecar and an archive (file:// or MinIO, optionally behaving
// as a store that ignores If-None-Match), checked after every step against a model of what
// was committed on each timeline.
//
// The tests live in *_test.go files. They run only when asked (KCBACKUP_HISTORY=1, a seed
// or a plan given, or `make soak`), because they are meant to find failures:
//
//	KCBACKUP_HISTORY=1 go test ./test/history -run TestHistory -v       # the short seeds
//	KCBACKUP_HISTORY_SEED=17 go test ./test/history -run TestHistory -v # replay one seed
//	make soak SEEDS=200                                                   # many seeds
//
// A failing seed prints its whole plan; KCBACKUP_HISTORY_PLAN replays a plan exactly.
package history
