package restore

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func tarOf(t *testing.T, entries ...tar.Header) *bytes.Buffer {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, h := range entries {
		h := h
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len("data"))
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("data"))
		}
	}
	tw.Close()
	return &b
}

func TestExtractTarNeverWritesOutsideTheDirectory(t *testing.T) {
	outside := t.TempDir()
	for name, entries := range map[string][]tar.Header{
		"dot-dot":           {{Name: "../evil", Typeflag: tar.TypeReg, Mode: 0o600}},
		"absolute":          {{Name: "/tmp/evil", Typeflag: tar.TypeReg, Mode: 0o600}},
		"through a symlink": {{Name: "pg_tblspc/x", Typeflag: tar.TypeSymlink, Linkname: outside}, {Name: "pg_tblspc/x/evil", Typeflag: tar.TypeReg, Mode: 0o600}},
		"relative symlink":  {{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "../.."}, {Name: "link/evil", Typeflag: tar.TypeReg, Mode: 0o600}},
	} {
		dir := t.TempDir()
		err := extractTar(tarOf(t, entries...), dir)
		if err == nil {
			t.Errorf("%s: extracted without error", name)
		}
		if _, serr := os.Stat(filepath.Join(outside, "evil")); serr == nil {
			t.Fatalf("%s: a file was written outside the data directory", name)
		}
	}
	dir := t.TempDir()
	if err := extractTar(tarOf(t, tar.Header{Name: "base/1/", Typeflag: tar.TypeDir}, tar.Header{Name: "base/1/123", Typeflag: tar.TypeReg, Mode: 0o600}), dir); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "base/1/123")); string(b) != "data" {
		t.Fatal("a regular entry was not extracted")
	}
}

func TestRecoveryCommandQuoting(t *testing.T) {
	if got := GUCQuote(ShellQuote("s3://b/it's")); !strings.Contains(got, `'\''`) || strings.Count(got, "''") < 2 {
		t.Fatalf("quoted %s", got)
	}
}
