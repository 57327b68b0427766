package file

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/storagetest"
)

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		st, err := New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return st
	})
}

func TestNewRejectsRelativePath(t *testing.T) {
	if _, err := New("relative/dir"); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Fatalf("New(relative) err = %v; want an 'absolute path' error", err)
	}
}

func TestListHidesTempFilesOfInterruptedWrites(t *testing.T) {
	dir := t.TempDir()
	st, _ := New(dir)
	if err := st.Put(context.Background(), "wal/a", strings.NewReader("a")); err != nil {
		t.Fatal(err)
	}
	// A temp file left by a writer that was killed before rename.
	if err := os.WriteFile(filepath.Join(dir, "wal", tempPrefix+"b-1234"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	list, err := st.List(context.Background(), "wal/")
	if err != nil || len(list) != 1 || list[0].Key != "wal/a" {
		t.Fatalf("List = %+v, %v; want only wal/a", list, err)
	}
	if _, err := st.Get(context.Background(), "wal/"+tempPrefix+"b-1234"); err == nil {
		t.Fatal("Get of a temp file name succeeded")
	}
}

func TestPutFailsClearlyOnUnwritableDirectory(t *testing.T) {
	if os.Geteuid() == 0 {
		// root ignores directory permissions; use a path under a regular file instead.
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "file"), nil, 0o600)
		st := &Store{root: filepath.Join(dir, "file")}
		if err := st.Put(context.Background(), "x/y", strings.NewReader("z")); err == nil || !strings.Contains(err.Error(), "x/y") {
			t.Fatalf("Put under a file err = %v; want an error naming the key", err)
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o500)
	st := &Store{root: dir}
	if err := st.Put(context.Background(), "x", strings.NewReader("z")); err == nil {
		t.Fatal("Put into a read-only directory succeeded")
	}
}
