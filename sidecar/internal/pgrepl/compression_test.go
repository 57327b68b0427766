package pgrepl

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

func TestCompressionUnsupportedKnowsAServerBuiltWithoutZstd(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"PostgreSQL 16 without zstd", &pgconn.PgError{Code: "42601", Message: "invalid compression specification: this build does not support compression with ZSTD"}, true},
		{"wrapped, as BaseBackup returns it", fmt.Errorf("BASE_BACKUP start position: %w", &pgconn.PgError{Code: "42601", Message: "invalid compression specification: this build does not support compression with ZSTD"}), true},
		{"translated (lc_messages=de)", &pgconn.PgError{Code: "42601", Message: "ungültige Komprimierungsangabe: dieses Build unterstützt keine Komprimierung mit ZSTD"}, true},
		{"another syntax error", &pgconn.PgError{Code: "42601", Message: `syntax error at or near "BASE_BACKUP"`}, false},
		{"zstd named in another error", &pgconn.PgError{Code: "58P01", Message: "could not load library zstd"}, false},
		{"not a server error", errors.New("this build does not support compression with ZSTD"), false},
		{"nil", nil, false},
	} {
		if got := CompressionUnsupported(tc.err); got != tc.want {
			t.Errorf("%s: CompressionUnsupported(%v) = %v; want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
