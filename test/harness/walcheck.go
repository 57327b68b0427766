package harness

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// CheckWAL checks that the WAL files in dir (named as in pg_wal) hold valid WAL of timeline
// tli from start to end (LSNs as PostgreSQL writes them, "0/5000000"), and returns what is
// wrong, or "" when nothing is: the output of `pg_waldump -p dir -t tli -s start -e end -q`
// for a version that ships pg_waldump.
//
// PostgreSQL 16's portable build ships none, and no other version's pg_waldump reads 16's
// WAL. For it the server itself is the oracle: each file in dir must equal the server's own
// copy in pg_wal byte for byte, up to end, and the server's pg_walinspect must read its WAL
// from start to end (pg_get_wal_records_info reads with the server's own WAL reader and
// fails at a missing or invalid record). The server must still hold that WAL (wal_keep_size)
// and accept CREATE EXTENSION pg_walinspect (a primary, or a promoted standby).
func (p *Postgres) CheckWAL(ctx context.Context, dir string, tli uint32, start, end string) (string, error) {
	if in := p.install; in.portable == nil || in.portable.own("pg_waldump") {
		var out bytes.Buffer
		cmd := p.Command(ctx, "pg_waldump", "-p", dir, "-t", strconv.FormatUint(uint64(tli), 10), "-s", start, "-e", end, "-q")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return out.String(), fmt.Errorf("pg_waldump over %s from %s to %s: %w", dir, start, end, err)
		}
		return out.String(), nil
	}
	from, err := parseLSNText(start)
	if err != nil {
		return "", err
	}
	to, err := parseLSNText(end)
	if err != nil {
		return "", err
	}
	if to < from {
		return "", fmt.Errorf("check WAL: end %s is before start %s", end, start)
	}
	segText, err := p.QueryString(ctx, "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
	if err != nil {
		return "", fmt.Errorf("check WAL: %w", err)
	}
	segSize, err := strconv.ParseUint(segText, 10, 64)
	if err != nil || segSize == 0 {
		return "", fmt.Errorf("check WAL: wal_segment_size is %q, not a size in bytes", segText)
	}
	// Step 1: the files equal the server's, up to end.
	for segno := from / segSize; segno*segSize < to; segno++ {
		name := fmt.Sprintf("%08X%08X%08X", tli, segno/(0x100000000/segSize), segno%(0x100000000/segSize))
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return fmt.Sprintf("%s: %v\n", name, err), nil
		}
		want, err := os.ReadFile(filepath.Join(p.DataDir(), "pg_wal", name))
		if err != nil {
			return "", fmt.Errorf("check WAL: the server's copy of %s (is the WAL still kept?): %w", name, err)
		}
		n := min(segSize, to-segno*segSize)
		if uint64(len(got)) < n || uint64(len(want)) < n {
			return fmt.Sprintf("%s: %d bytes, the server's %d; want at least %d\n", name, len(got), len(want), n), nil
		}
		if i := firstDifference(got[:n], want[:n]); i >= 0 {
			return fmt.Sprintf("%s differs from the server's copy at byte %d\n", name, i), nil
		}
	}
	// Step 2: the server reads its WAL from start to end, record after record.
	if err := p.Exec(ctx, "CREATE EXTENSION IF NOT EXISTS pg_walinspect"); err != nil {
		return "", fmt.Errorf("check WAL: %w", err)
	}
	if _, err := p.QueryString(ctx, fmt.Sprintf("SELECT count(*) FROM pg_get_wal_records_info('%s', '%s')", start, end)); err != nil {
		return fmt.Sprintf("pg_walinspect from %s to %s: %v\n", start, end, err), nil
	}
	return "", nil
}

// parseLSNText parses an LSN as PostgreSQL writes it: "16/B374D848".
func parseLSNText(s string) (uint64, error) {
	hi, lo, ok := strings.Cut(s, "/")
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q: expected two hexadecimal numbers such as 0/5000000", s)
	}
	return h<<32 | l, nil
}

// firstDifference returns the offset of the first byte where a and b (of equal length)
// differ, or -1.
func firstDifference(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
