package history

import (
	"os"
	"testing"

	"github.com/kcbackup/kcbackup/test/harness"
)

// fixedPlans are histories that broke an invariant when they were found, replayed as they
// ran (the seed also fixes the checks' sampling). Each names the seed and step where the
// failure showed. They run when asked (KCBACKUP_HISTORY_FIXED=1), all or one by one:
//
//	KCBACKUP_HISTORY_FIXED=1 go test ./test/history -run 'TestHistoryFixed/PruneKeepsTheLiveTimelineRestorable' -v
var fixedPlans = []struct {
	name string
	seed int64
	plan string
}{
	// Right after the first backup, list reports a window whose latest is before its
	// earliest (the newest WAL object is older than the backup's stop).
	{"WindowNeverEndsBeforeItStarts", 3, "storage=file,sync=false,partial=1s"},
	// Backups on three timelines; --keep-within removes every backup on the live
	// timeline's path: the window of the live timeline becomes empty (step 5).
	{"PruneKeepsTheLiveTimelineRestorable", 1, "storage=file,sync=true,partial=0 hole:834:0.816 backup:86:0.388 restore:983:0.233 backup:468:0.191 restore:923:0.734 prune:790:0.878"},
	// A time before the in-place restore's promotion lies on timeline 1 (where the cluster
	// wrote then) and on timeline 2's path: restore without --timeline silently gives 2's.
	{"AmbiguousTimeIsRefused", 64, "storage=file,sync=false,partial=200ms restore:153:0.150"},
	// A WAL hole on timeline 2: the sidecar loops on "TIMELINE_HISTORY 2: expected 1
	// result set, got 0" and never becomes ready again (step 3).
	{"SidecarRecoversFromAHoleOnALaterTimeline", 5, "storage=file,sync=false,partial=200ms prune:510:0.478 restore:558:0.143 write:96:0.481 hole:821:0.780"},
	// The restored cluster keeps restore's recovery settings in postgresql.auto.conf; a
	// standby cloned from it cannot follow timeline 3, or PANICs at promotion on a
	// zero-padded partial that restore_command serves (step 1).
	{"StandbyOfARestoredCluster", 63, "storage=file,sync=false,partial=1s restore:105:0.706 promote:175:0.894"},
	// A restore along timeline 3 to a point of timeline 2's part of its path: PostgreSQL
	// writes timeline 4's history with a switch point earlier than the one before it,
	// which walarchive.ParseTimelineHistory refuses (step 6); the sidecar then stops
	// archiving for good ("timeline 3 history from the server: ... does not follow", seed 306
	// step 3 too).
	{"RestoreBeforeABranchPointKeepsTheArchiveReadable", 63, "storage=file,sync=false,partial=1s restore:105:0.706 promote:175:0.894 crash:50:0.800 backup:777:0.502 crash:48:0.667 write:188:0.847 restore:68:0.090"},
	// After a promotion (sidecar moved to the standby before the last rows), a restore to
	// latest lacked 456 of the 1223 rows the promoted timeline holds (step 5).
	{"LatestAfterPromotionHoldsEveryRow", 68, "storage=file,sync=false,partial=1s crash:168:0.778 restore:33:0.306 write:49:0.029 prune:145:0.094 backup:249:0.246 promote:62:0.198"},
	// A backup taken after an in-place restore carries that restore's recovery_target_time
	// in postgresql.auto.conf; restore --to latest of it adds none of its own, so recovery
	// aims at the old target and fails "recovery ended before configured recovery target
	// was reached" (step 9).
	{"LatestOfABackupTakenAfterARestore", 101, "storage=s3,sync=true,partial=0 kill:938:0.754 restore:368:0.024 restore:146:0.636 write:59:0.633 outage:195:0.287 restore:273:0.655 write:120:0.982 crash:34:0.882 kill:167:0.680 backup:368:0.708"},
	// PostgreSQL stopped in immediate mode under load, restarted; the sidecar reports the
	// archive caught up, yet a restore to latest lacks the 267 rows written in the 1.3 s
	// before the crash and promotes without a word (step 4).
	{"LatestAfterACrashHoldsEveryRow", 305, "storage=s3,sync=false,partial=200ms restore:707:0.279 crash:30:0.888 backup:797:0.431 backup:843:0.142 crash:197:0.047"},
	// synchronous_commit = remote_write with the store down: a commit returns, the server
	// crashes, and a restore to latest lacks it (step 0).
	{"RemoteWriteCommitsSurviveACrash", 1526, "storage=s3,sync=true,partial=0,commit=remote_write crash:122:0.998"},
	// An in-place restore after a promotion (to timeline 4, a point of timeline 3's life): the sidecar's
	// new slot starts at the backup's 0/700028 and it streams timeline 1 from 0/700000,
	// which the restored server no longer has ("requested WAL segment
	// 00000002000000000000000A has already been removed"): archiving stops (step 4; a
	// replay stopped already at the first in-place restore, step 2).
	{"ArchivingFollowsASecondInPlaceRestore", 106, "storage=file,sync=false,partial=200ms promote:147:0.634 backup:339:0.905 restore:317:0.134 write:182:0.054 restore:414:0.708"},
	// An in-place restore to a point of timeline 2 that lies on timeline 1's part of its path,
	// after a WAL hole on timeline 1: the new slot reserves WAL from the restored backup's
	// redo point (0/700028, before the end-of-recovery checkpoint), and the sidecar streams
	// timeline 1 from there; the server never had timeline 1's segments past the restore's
	// switch point ("requested WAL segment 000000010000000000000009 has already been
	// removed"): archiving stops (step 4; it depends on the checkpoint's timing, seen once in
	// 60 seeds).
	{"ArchivingFollowsARestoreOntoAnAncestorsPart", 5003, "storage=s3,sync=false,partial=200ms crash:79:0.848 hole:27:0.899 promote:29:0.625 outage:29:0.243 restore:307:0.180 backup:251:0.406"},
	// Synchronous mode (synchronous_commit = on): PostgreSQL stopped in immediate mode under
	// load; a restore to latest taken with the server down lacks 116 acknowledged commits
	// (step 7).
	{"SynchronousCommitsSurviveACrash", 137, "storage=s3,sync=true,partial=0 write:76:0.265 kill:104:0.738 write:178:0.744 restore:276:0.538 crash:190:0.033 restore:706:0.301 backup:745:0.379 crash:109:0.702"},
	// Synchronous mode, sidecar SIGKILLed and restarted, archive reported caught up: a
	// restore to latest lacks the last 2 acknowledged commits (step 5).
	{"LatestAfterASidecarKillHoldsEveryRow", 136, "storage=file,sync=true,partial=0 restore:204:0.282 prune:265:0.064 write:28:0.808 prune:916:0.282 backup:299:0.710 kill:144:0.979"},
	// Synchronous mode, a MinIO outage under load: after it, a restore to latest lacks 20
	// of the rows written around the outage (step 7).
	{"LatestAfterAnOutageHoldsEveryRow", 220, "storage=s3,sync=true,partial=0 backup:907:0.679 outage:115:0.733 restore:452:0.731 prune:410:0.281 prune:149:0.940 backup:217:0.815 backup:388:0.870 outage:189:0.089"},
	// An in-place restore (timeline 2), then a promotion (timeline 3) with one sidecar that
	// follows the switch: restore --to latest is refused as "two servers wrote into this
	// archive at once" (ErrAmbiguousTimeline), because timeline 2's last partial
	// (00000002000000000000000A.partial, ending at the switch point 0/A08348) was stored
	// 2 ms after 00000003.history (step 4; 2 runs in 4, seed 22's promotion once in 7).
	{"LatestAfterAPromotionIsNotAmbiguous", 7003, "storage=s3,sync=false,partial=1s,pg=17 copy:702:0.325 restore:546:0.525 write:199:0.181 write:84:0.780 promote:82:0.005"},
	// Issue 20's crash between parts, on each store, synchronous and not: the sidecar killed
	// with tail parts in flight, parts past a gap stored (step 0: the run's next part missing;
	// step 2: the run's next part stored, the one after it missing). With the sidecar dead,
	// list reports the live window up to when the part past the gap was stored (Graph takes
	// a tail's time from all its parts), and restore --to that end exits 0 without the rows
	// committed between the run's end and then (all four, step 0).
	{"CrashBetweenPartsFileSync", 2001, "storage=file,sync=true,partial=0 partcrash:36:0.400 write:40:0.500 partcrash:121:0.700"},
	{"CrashBetweenPartsFileAsync", 2002, "storage=file,sync=false,partial=200ms partcrash:58:0.250 write:40:0.500 partcrash:77:0.900"},
	{"CrashBetweenPartsS3Sync", 2003, "storage=s3,sync=true,partial=0 partcrash:140:0.150 write:40:0.500 partcrash:3:0.620"},
	{"CrashBetweenPartsS3Async", 2004, "storage=s3,sync=false,partial=1s partcrash:92:0.830 write:40:0.500 partcrash:165:0.310"},
}

// envFixed ("1") runs the fixed histories.
const envFixed = "KCBACKUP_HISTORY_FIXED"

func TestHistoryFixed(t *testing.T) {
	if os.Getenv(envFixed) != "1" && !harness.InCI() { // CI never skips them
		t.Skipf("the fixed histories run when asked: %s=1", envFixed)
	}
	for _, fp := range fixedPlans {
		t.Run(fp.name, func(t *testing.T) {
			p, err := parsePlan(fp.seed, fp.plan)
			if err != nil {
				t.Fatal(err)
			}
			runPlan(t, p)
		})
	}
}

func TestFixedPlansParse(t *testing.T) {
	for _, fp := range fixedPlans {
		if _, err := parsePlan(fp.seed, fp.plan); err != nil {
			t.Errorf("%s: %v", fp.name, err)
		}
	}
}
