package streamer

import (
	"testing"

	"github.com/kcbackup/kcbackup/walarchive"
)

func TestAckPositionsNeverRunAheadOfTheArchive(t *testing.T) {
	for _, tc := range []struct {
		name                      string
		archived, received, floor walarchive.LSN
		write, flush              walarchive.LSN
	}{
		{"nothing archived yet after the slot's restart point", 0x1000000, 0x1000000, 0x1000028, 0, 0},
		{"archived below the floor: the slot's restart point is not claimed", 0x1000100, 0x1000200, 0x1000800, 0, 0},
		{"archived exactly at the floor", 0x1000800, 0x1000900, 0x1000800, 0x1000800, 0x1000800},
		{"received ahead of archived: write is not the received position", 0x2000000, 0x2300000, 0x1000000, 0x2000000, 0x2000000},
		{"archived never reported beyond what this connection received", 0x3000000, 0x2800000, 0x1000000, 0x2800000, 0x2800000},
		{"fresh session at LSN 0", 0, 0, 0, 0, 0},
	} {
		w, f := ackPositions(tc.archived, tc.received, tc.floor)
		if w != tc.write || f != tc.flush {
			t.Errorf("%s: write %s flush %s; want %s %s", tc.name, w, f, tc.write, tc.flush)
		}
	}
}
