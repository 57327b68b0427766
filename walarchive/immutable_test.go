package walarchive

import (
	"bytes"
	"context"
	"testing"

	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/file"
	"github.com/kcbackup/kcbackup/walarchive/storage/memory"
	"github.com/kcbackup/kcbackup/walarchive/storage/storagetest"
)

// racePutImmutable races writers of different bytes for one immutable key: exactly one
// stores, the others get ErrConflict ("already stored with other bytes"), and the winner's
// bytes again succeed as AlreadyStored (RELIABILITY 7). The MinIO run is in storage/s3.
func racePutImmutable(t *testing.T, st storage.Storage) {
	t.Helper()
	ctx := context.Background()
	a, err := InitArchive(ctx, st, testIdentity(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key := SegmentKey(1, 7, seg1M)
	errs := storagetest.Race(6, func(i int) error {
		_, err := a.PutImmutable(ctx, key, bytes.NewReader(bytes.Repeat([]byte{byte(i + 1)}, seg1M)))
		return err
	})
	winner := storagetest.OneWinner(t, errs, ErrConflict)
	var got bytes.Buffer
	if _, err := a.Get(ctx, key, &got); err != nil || !bytes.Equal(got.Bytes(), bytes.Repeat([]byte{byte(winner + 1)}, seg1M)) {
		t.Fatalf("stored segment is not the winner's (%v)", err)
	}
	res, err := a.PutImmutable(ctx, key, bytes.NewReader(got.Bytes()))
	if err != nil || !res.AlreadyStored {
		t.Fatalf("same bytes again: %+v, %v; want AlreadyStored", res, err)
	}
}

func TestPutImmutableRaceHasOneWinnerOnMemoryAndFile(t *testing.T) {
	racePutImmutable(t, memory.New())
	fst, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	racePutImmutable(t, fst)
}
