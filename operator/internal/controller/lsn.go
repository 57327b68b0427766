package controller

import (
	"fmt"
	"strconv"
	"strings"
)

// lsn is a PostgreSQL WAL position, as the sidecar reports it ("X/Y"). The operator only
// compares positions; it never reads WAL.
type lsn uint64

// parseLSN parses PostgreSQL's textual form: two hex numbers of up to 8 digits around '/'.
func parseLSN(s string) (lsn, error) {
	hi, lo, ok := strings.Cut(s, "/")
	if !ok || hi == "" || lo == "" || len(hi) > 8 || len(lo) > 8 {
		return 0, fmt.Errorf("invalid LSN %q: expected two hex numbers of up to 8 digits separated by '/', like 0/16B3748", s)
	}
	h, err1 := strconv.ParseUint(hi, 16, 32)
	l, err2 := strconv.ParseUint(lo, 16, 32)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("invalid LSN %q: expected hex digits on both sides of '/'", s)
	}
	return lsn(h<<32 | l), nil
}
