package walarchive

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
)

const seg1M = 1 << 20

func testIdentity() Identity {
	return Identity{SystemIdentifier: "7300000000000000001", PostgresVersion: 15, WALSegmentSize: seg1M, Compression: CompressionZstd}
}

func TestInitArchiveRefusesAnotherCluster(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	if _, err := InitArchive(ctx, st, testIdentity(), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := InitArchive(ctx, st, testIdentity(), nil); err != nil {
		t.Fatalf("same cluster refused: %v", err)
	}
	for _, tc := range []struct {
		mutate func(*Identity)
		want   string
	}{
		{func(i *Identity) { i.SystemIdentifier = "42" }, "system identifier"},
		{func(i *Identity) { i.PostgresVersion = 16 }, "PostgreSQL 16"},
		{func(i *Identity) { i.WALSegmentSize = 16 << 20 }, "segments"},
	} {
		id := testIdentity()
		tc.mutate(&id)
		if _, err := InitArchive(ctx, st, id, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("InitArchive with %+v: err = %v; want one mentioning %q", id, err, tc.want)
		}
	}
}

func TestOpenArchiveReportsMissingAndCorruptIdentity(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	if _, err := OpenArchive(ctx, st, nil); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("empty storage: err = %v; want ErrNoIdentity", err)
	}
	InitArchive(ctx, st, testIdentity(), nil)
	st.Corrupt(IdentityKey, 20)
	if _, err := OpenArchive(ctx, st, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt identity: err = %v; want ErrCorrupt", err)
	}
}

func TestPutImmutableAcceptsSameBytesAndKeepsStoredOnConflict(t *testing.T) {
	ctx := context.Background()
	a, _ := InitArchive(ctx, memory.New(), testIdentity(), nil)
	key := SegmentKey(1, 3, seg1M)
	first := bytes.Repeat([]byte{1}, seg1M)
	if _, err := a.PutImmutable(ctx, key, bytes.NewReader(first)); err != nil {
		t.Fatal(err)
	}
	res, err := a.PutImmutable(ctx, key, bytes.NewReader(first))
	if err != nil || !res.AlreadyStored {
		t.Fatalf("same bytes again: %+v, %v; want AlreadyStored", res, err)
	}
	other := bytes.Repeat([]byte{2}, seg1M)
	if _, err := a.PutImmutable(ctx, key, bytes.NewReader(other)); !errors.Is(err, ErrConflict) {
		t.Fatalf("different bytes: err = %v; want ErrConflict", err)
	}
	var got bytes.Buffer
	if _, err := a.Get(ctx, key, &got); err != nil || !bytes.Equal(got.Bytes(), first) {
		t.Fatalf("stored object changed after a conflicting put (err=%v)", err)
	}
}

func TestFetchWALFileServesPartialPaddedAndReportsAbsence(t *testing.T) {
	ctx := context.Background()
	a, _ := InitArchive(ctx, memory.New(), testIdentity(), nil)
	tail := bytes.Repeat([]byte{7}, 1000)
	if _, err := a.Put(ctx, PartialKey(1, 5, seg1M), bytes.NewReader(tail)); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	src, err := a.FetchWALFile(ctx, SegmentName(1, 5, seg1M), &out)
	if err != nil || src != FetchedPartial {
		t.Fatalf("fetch of a partial-only segment: %v, %v", src, err)
	}
	if out.Len() != seg1M || !bytes.Equal(out.Bytes()[:1000], tail) || out.Bytes()[1000] != 0 {
		t.Fatalf("partial not padded to the segment size: %d bytes", out.Len())
	}
	// A complete segment wins over a partial of the same name.
	full := bytes.Repeat([]byte{9}, seg1M)
	a.PutImmutable(ctx, SegmentKey(1, 5, seg1M), bytes.NewReader(full))
	out.Reset()
	if src, err := a.FetchWALFile(ctx, SegmentName(1, 5, seg1M), &out); err != nil || src != FetchedComplete || !bytes.Equal(out.Bytes(), full) {
		t.Fatalf("fetch with complete segment: %v, %v", src, err)
	}
	for _, name := range []string{SegmentName(1, 6, seg1M), "00000002.history", SegmentName(2, 5, seg1M)} {
		if _, err := a.FetchWALFile(ctx, name, &out); !errors.Is(err, ErrWALNotInArchive) {
			t.Errorf("fetch %s: err = %v; want ErrWALNotInArchive", name, err)
		}
	}
	if _, err := a.FetchWALFile(ctx, "../../etc/passwd", &out); err == nil || errors.Is(err, ErrWALNotInArchive) {
		t.Errorf("fetch of a malformed name: err = %v; want a clear error, not 'not found'", err)
	}
}

func TestFetchCompleteSegmentNeverServesThePartial(t *testing.T) {
	ctx := context.Background()
	a, _ := InitArchive(ctx, memory.New(), testIdentity(), nil)
	if _, err := a.Put(ctx, PartialKey(1, 5, seg1M), bytes.NewReader(bytes.Repeat([]byte{7}, 1000))); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := a.FetchCompleteSegment(ctx, 1, 5, &out); !errors.Is(err, ErrWALNotInArchive) || out.Len() != 0 {
		t.Fatalf("complete fetch with only a partial stored: %v, %d bytes written; want ErrWALNotInArchive and none", err, out.Len())
	}
	full := bytes.Repeat([]byte{9}, seg1M)
	a.PutImmutable(ctx, SegmentKey(1, 5, seg1M), bytes.NewReader(full))
	if err := a.FetchCompleteSegment(ctx, 1, 5, &out); err != nil || !bytes.Equal(out.Bytes(), full) {
		t.Fatalf("complete fetch: %v, %d bytes", err, out.Len())
	}
	// A stored "segment" of the wrong size is corruption, never absence.
	a.PutImmutable(ctx, SegmentKey(1, 6, seg1M), bytes.NewReader(full[:seg1M/2]))
	out.Reset()
	if err := a.FetchCompleteSegment(ctx, 1, 6, &out); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short segment: err = %v; want ErrCorrupt", err)
	}
	out.Reset()
	if _, err := a.FetchWALFile(ctx, SegmentName(1, 6, seg1M), &out); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("short segment through FetchWALFile: err = %v; want ErrCorrupt", err)
	}
}

func TestFetchWALFileReportsCorruptionNotAbsence(t *testing.T) {
	ctx := context.Background()
	st := memory.New()
	a, _ := InitArchive(ctx, st, testIdentity(), nil)
	key := SegmentKey(1, 2, seg1M)
	a.PutImmutable(ctx, key, bytes.NewReader(bytes.Repeat([]byte{3}, seg1M)))
	info, _ := st.Stat(ctx, key)
	if err := st.Corrupt(key, int(info.Size)/2); err != nil {
		t.Fatal(err)
	}
	_, err := a.FetchWALFile(ctx, SegmentName(1, 2, seg1M), &bytes.Buffer{})
	if !errors.Is(err, ErrCorrupt) || errors.Is(err, ErrWALNotInArchive) || !strings.Contains(err.Error(), key) {
		t.Fatalf("err = %v; want ErrCorrupt naming %s", err, key)
	}
}

func TestParseStorageURL(t *testing.T) {
	env := map[string]string{"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000", "KCBACKUP_S3_FORCE_PATH_STYLE": "true"}
	getenv := func(k string) string { return env[k] }
	loc, err := ParseStorageURL("s3://my-bucket/some/prefix/", getenv)
	if err != nil || loc.S3.Bucket != "my-bucket" || loc.S3.Prefix != "some/prefix" || loc.S3.Region != "eu-west-1" || !loc.S3.ForcePathStyle || loc.S3.Endpoint != "http://127.0.0.1:9000" {
		t.Fatalf("s3 URL parsed to %+v, %v", loc, err)
	}
	loc, err = ParseStorageURL("s3://b-1/p?region=us-east-2&force-path-style=false", getenv)
	if err != nil || loc.S3.Region != "us-east-2" || loc.S3.ForcePathStyle {
		t.Fatalf("query parameters do not override the environment: %+v, %v", loc, err)
	}
	loc, err = ParseStorageURL("file:///var/lib/archive/", getenv)
	if err != nil || loc.Path != "/var/lib/archive" {
		t.Fatalf("file URL parsed to %+v, %v", loc, err)
	}
	for _, bad := range []string{"", "relative/path", "/abs/path", "file://relative", "file://host/path", "file:///p?x=1", "s3://", "s3:///prefix",
		"gs://bucket", "s3://bucket?unknown=1", "s3://bucket?force-path-style=maybe", "s3://user:secret@bucket/p", "s3://Bad_Bucket/p"} {
		_, err := ParseStorageURL(bad, getenv)
		if err == nil {
			t.Errorf("ParseStorageURL(%q) accepted a bad URL", bad)
			continue
		}
		if strings.Contains(err.Error(), "secret") {
			t.Errorf("error for %q leaks the password: %v", bad, err)
		}
	}
	env["KCBACKUP_S3_FORCE_PATH_STYLE"] = "yes please"
	if _, err := ParseStorageURL("s3://bucket", getenv); err == nil || !strings.Contains(err.Error(), "KCBACKUP_S3_FORCE_PATH_STYLE") {
		t.Errorf("bad env var: err = %v; want one naming KCBACKUP_S3_FORCE_PATH_STYLE", err)
	}
}
