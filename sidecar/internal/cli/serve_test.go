package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/internal/server"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage/file"
)

const serveHistory = "1\t0/3000000\tno recovery target specified\n"

// newServeArchive makes a file archive holding an identity and the history file of timeline 2.
func newServeArchive(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "archive")
	st, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a, err := walarchive.InitArchive(ctx, st, walarchive.Identity{SystemIdentifier: "7300000000000000001", PostgresVersion: 17,
		WALSegmentSize: 1 << 20, Compression: walarchive.CompressionZstd}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.PutImmutable(ctx, walarchive.HistoryKey(2), strings.NewReader(serveHistory)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// archiveFiles lists every file under dir with its size and modification time.
func archiveFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		files[p] = fmt.Sprintf("%s %d bytes", fi.ModTime(), fi.Size())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestServeRefusesBadInputsNamingThem: a missing or empty token file, a bad storage URL, a
// directory that holds no archive, or an archive of an unknown format stop serve with a
// non-zero exit and an error naming the input, before it listens, and nothing is created.
func TestServeRefusesBadInputsNamingThem(t *testing.T) {
	dir := t.TempDir()
	archive := newServeArchive(t)
	token := writeFile(t, filepath.Join(dir, "token"), "fetch-token\n")
	empty := writeFile(t, filepath.Join(dir, "empty"), "\n")
	absent := filepath.Join(dir, "absent")
	emptyDir := filepath.Join(dir, "empty-archive")
	if err := os.Mkdir(emptyDir, 0o700); err != nil {
		t.Fatal(err)
	}
	future := filepath.Join(dir, "future")
	st, err := file.New(future)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := json.Marshal(walarchive.Identity{FormatVersion: 99, SystemIdentifier: "1", PostgresVersion: 17, WALSegmentSize: 1 << 20,
		Compression: walarchive.CompressionZstd})
	if _, err := walarchive.PutObject(context.Background(), st, walarchive.IdentityKey, bytes.NewReader(id), walarchive.CompressionNone, nil); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name string
		args []string
		want []string
	}{
		{"no token", []string{"--storage", "file://" + archive}, []string{"--fetch-token-file", "required"}},
		{"absent token file", []string{"--storage", "file://" + archive, "--fetch-token-file", absent}, []string{"--fetch-token-file", absent}},
		{"empty token file", []string{"--storage", "file://" + archive, "--fetch-token-file", empty}, []string{"--fetch-token-file", empty, "empty"}},
		{"no storage", []string{"--fetch-token-file", token}, []string{"--storage", "required"}},
		{"bad storage URL", []string{"--storage", "ftp://host/x", "--fetch-token-file", token}, []string{"--storage", "ftp://host/x"}},
		{"no archive directory", []string{"--storage", "file://" + absent, "--fetch-token-file", token}, []string{"--storage", absent, "no archive directory"}},
		{"no archive in the directory", []string{"--storage", "file://" + emptyDir, "--fetch-token-file", token}, []string{"--storage", emptyDir, "identity.json"}},
		{"unknown format", []string{"--storage", "file://" + future, "--fetch-token-file", token}, []string{"--storage", future, "format version 99"}},
		{"bad prefetch", []string{"--storage", "file://" + archive, "--fetch-token-file", token, "--wal-prefetch", "-1"}, []string{"--wal-prefetch"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Bounded, and on a free port: a serve that wrongly starts stops instead of hanging.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			args := append([]string{"serve", "--listen", "127.0.0.1:0"}, c.args...)
			code := Execute(ctx, "test", args, &stdout, &stderr)
			if code == 0 {
				t.Fatalf("serve %v: exit 0; want a refusal", c.args)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr.String(), w) {
					t.Errorf("serve %v: stderr %q; want it to name %q", c.args, stderr.String(), w)
				}
			}
			if strings.Contains(stderr.String(), "fetch-token\n") {
				t.Errorf("the error shows the token: %s", stderr.String())
			}
		})
	}
	if _, err := os.Stat(absent); !os.IsNotExist(err) {
		t.Errorf("serve created %s: %v", absent, err)
	}
	if entries, _ := os.ReadDir(emptyDir); len(entries) != 0 {
		t.Errorf("serve wrote into %s: %d entries", emptyDir, len(entries))
	}
}

// TestServeServesWALAndNeverWritesTheArchive: the API serve builds answers a WAL fetch with
// the file, 404 for an absent segment, 403 for everything else, and leaves the archive's
// files exactly as they were.
func TestServeServesWALAndNeverWritesTheArchive(t *testing.T) {
	archive := newServeArchive(t)
	before := archiveFiles(t, archive)
	token := writeFile(t, filepath.Join(t.TempDir(), "token"), "fetch-token\n")
	o := &serveOptions{storage: "file://" + archive, fetchTokenFile: token, listen: "127.0.0.1:0", walPrefetch: 2}
	cfg, err := o.config(context.Background(), &globalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.New(cfg).Handler())
	defer srv.Close()
	get := func(method, path, tok string) (int, string) {
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("GET", "/v1/wal/00000002.history", "fetch-token"); code != 200 || body != serveHistory {
		t.Errorf("GET the history file: %d %q; want 200 with its content", code, body)
	}
	if code, body := get("GET", "/v1/wal/"+walarchive.SegmentName(2, 3, 1<<20), "fetch-token"); code != 404 {
		t.Errorf("GET an absent segment: %d %s; want 404, so recovery ends there", code, body)
	}
	if code, _ := get("GET", "/v1/wal/00000002.history", "admin-token"); code != 401 {
		t.Errorf("GET WAL with another token: %d; want 401", code)
	}
	for _, p := range []string{"/v1/backups", "/v1/prune", "/v1/status"} {
		if code, body := get("POST", p, "fetch-token"); code != 403 || !strings.Contains(body, "read-only kcbackup serve") {
			t.Errorf("POST %s: %d %s; want 403 saying serve is read-only", p, code, body)
		}
	}
	if code, _ := get("GET", "/readyz", ""); code != 200 {
		t.Errorf("/readyz after the archive was opened: %d; want 200", code)
	}
	after := archiveFiles(t, archive)
	if len(after) != len(before) {
		t.Fatalf("the archive changed: %d files before, %d after", len(before), len(after))
	}
	for p, v := range before {
		if after[p] != v {
			t.Errorf("%s changed: %s, now %s", p, v, after[p])
		}
	}
}

// TestReadOnlyStorageRefusesEveryWrite: whatever code path serve runs, its store cannot
// put, replace or delete an object.
func TestReadOnlyStorageRefusesEveryWrite(t *testing.T) {
	archive := newServeArchive(t)
	st, err := openStorageReadOnly(context.Background(), "file://"+archive)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	key := walarchive.HistoryKey(2)
	for name, op := range map[string]func() error{
		"Put":         func() error { return st.Put(ctx, "new-object", strings.NewReader("x")) },
		"PutIfAbsent": func() error { return st.PutIfAbsent(ctx, "new-object", strings.NewReader("x")) },
		"Delete":      func() error { return st.Delete(ctx, key) },
	} {
		if err := op(); err == nil || !strings.Contains(err.Error(), "never writes") {
			t.Errorf("%s through serve's store: %v; want a refusal", name, err)
		}
	}
	if _, err := st.Stat(ctx, key); err != nil {
		t.Errorf("the history file after a refused delete: %v", err)
	}
	if _, err := st.Stat(ctx, "new-object"); err == nil {
		t.Error("a refused put stored an object")
	}
}
