package walarchive

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// FormatVersion is the archive layout version this code writes. Version 3 stores the live
// tail of a segment as appended parts (see tail.go); version 2 stored it as one
// <segment>.partial object, rewritten whole on each upload.
//
// This code reads archives of versions 2 and 3: a version-2 partial is read as a tail of
// one part. The first writer of this version (the sidecar, a base backup) to open a
// version-2 archive moves its identity to version 3 before it stores anything, so that an
// older kcbackup, which would not see the parts and would restore less than the archive
// holds, refuses the archive instead of restoring from it.
const FormatVersion = 3

// oldestReadableFormat is the oldest archive format version this code reads.
const oldestReadableFormat = 2

// ErrNoIdentity is returned by OpenArchive when the storage holds no archive yet.
var ErrNoIdentity = errors.New("no kcbackup archive here (identity.json is missing)")

// ErrIdentityMismatch is returned (wrapped) when an archive belongs to another cluster.
var ErrIdentityMismatch = errors.New("the archive belongs to another cluster")

// ErrConflict is returned when an object that must never change (a complete segment, a
// history file) is already stored with different content. The stored object is kept.
var ErrConflict = errors.New("a different object is already stored under this key")

// Identity records which cluster an archive belongs to. A server whose identity differs is
// refused, so two clusters never mix their WAL in one archive.
type Identity struct {
	FormatVersion    int         `json:"formatVersion"`
	SystemIdentifier string      `json:"systemIdentifier"`
	PostgresVersion  int         `json:"postgresVersion"`
	WALSegmentSize   uint64      `json:"walSegmentSize"`
	Compression      Compression `json:"compression"`
	// EncryptionKeyID names the age recipients (public keys, sorted, comma-separated) the
	// archive's objects are encrypted to; empty when the archive is not encrypted.
	EncryptionKeyID string    `json:"encryptionKeyID,omitempty"`
	CreatedAt       time.Time `json:"createdAt"`
}

// Validate checks an identity read from storage or built from a server.
func (id Identity) Validate() error {
	if id.FormatVersion < oldestReadableFormat || id.FormatVersion > FormatVersion {
		return fmt.Errorf("archive format version %d is not supported (this kcbackup reads versions %d to %d; a newer archive needs a newer kcbackup)", id.FormatVersion, oldestReadableFormat, FormatVersion)
	}
	if _, err := strconv.ParseUint(id.SystemIdentifier, 10, 64); err != nil {
		return fmt.Errorf("invalid system identifier %q: expected a decimal number", id.SystemIdentifier)
	}
	if id.PostgresVersion < 10 {
		return fmt.Errorf("invalid PostgreSQL major version %d: expected 10 or later", id.PostgresVersion)
	}
	if err := ValidateSegmentSize(id.WALSegmentSize); err != nil {
		return err
	}
	if _, err := ParseCompression(string(id.Compression)); err != nil {
		return err
	}
	return nil
}

// Archive is an opened archive: storage plus the identity of the cluster it belongs to.
type Archive struct {
	Storage  storage.Storage
	Identity Identity
	// Key encrypts and decrypts the archive's objects (nil for an unencrypted archive).
	Key Key
	// Conditional says whether the store honours conditional writes (PutIfAbsent), as
	// ProbeConditionalWrites found out. Until it is known, immutable objects are compared
	// with what is stored before each write.
	Conditional ConditionalWrites
	// UpgradedFrom is the format version InitArchive moved the archive from (0: none).
	UpgradedFrom int
}

// ConditionalWrites says whether a store's PutIfAbsent is atomic.
type ConditionalWrites int

const (
	// ConditionalUnknown: not probed; immutable writes check first (safe, one more round trip).
	ConditionalUnknown ConditionalWrites = iota
	// ConditionalHonoured: PutIfAbsent refuses an existing key atomically.
	ConditionalHonoured
	// ConditionalIgnored: PutIfAbsent replaces like Put (a store that ignores If-None-Match):
	// immutable writes check first; two writers racing between the check and the write can
	// still both write (one writer per archive is what prevents that).
	ConditionalIgnored
)

func (c ConditionalWrites) String() string {
	return [...]string{"unknown", "honoured", "ignored"}[c]
}

func (a *Archive) conditionalWrites() bool { return a.Conditional == ConditionalHonoured }

// probePrefix holds the scratch objects of ProbeConditionalWrites (never listed by WAL or
// backup code).
const probePrefix = "probe/"

// ProbeConditionalWrites finds out whether the store honours conditional writes: it writes
// a scratch object twice with PutIfAbsent (the second must be refused) and deletes it. The
// answer is kept in a.Conditional.
func (a *Archive) ProbeConditionalWrites(ctx context.Context) (ConditionalWrites, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return ConditionalUnknown, err
	}
	key := fmt.Sprintf("%s%x", probePrefix, rnd)
	defer a.Storage.Delete(context.WithoutCancel(ctx), key)
	for i, body := range []string{"first", "second"} {
		err := a.Storage.PutIfAbsent(ctx, key, strings.NewReader(body))
		switch {
		case i == 0 && err != nil:
			return ConditionalUnknown, fmt.Errorf("probe conditional writes (%s): %w", key, err)
		case i == 1 && errors.Is(err, storage.ErrExists):
			a.Conditional = ConditionalHonoured
		case i == 1 && err == nil:
			a.Conditional = ConditionalIgnored
		case i == 1:
			return ConditionalUnknown, fmt.Errorf("probe conditional writes (%s): %w", key, err)
		}
	}
	return a.Conditional, nil
}

// SegmentSize is the archive's WAL segment size.
func (a *Archive) SegmentSize() uint64 { return a.Identity.WALSegmentSize }

// OpenArchive reads the identity of an existing archive and checks the key against it:
// an encrypted archive needs its key, an unencrypted one refuses a key.
func OpenArchive(ctx context.Context, st storage.Storage, key Key) (*Archive, error) {
	a, err := readIdentity(ctx, st)
	if err != nil {
		return nil, err
	}
	if err := checkKey(a.Identity, key); err != nil {
		return nil, err
	}
	a.Key = key
	return a, nil
}

func checkKey(id Identity, key Key) error {
	return checkArchiveKey(id.EncryptionKeyID, key, false)
}

func readIdentity(ctx context.Context, st storage.Storage) (*Archive, error) {
	data, err := getSmall(ctx, st, IdentityKey, nil)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, ErrNoIdentity
	}
	if err != nil {
		return nil, fmt.Errorf("read archive identity: %w", err)
	}
	var id Identity
	if err := json.Unmarshal(data, &id); err != nil {
		return nil, fmt.Errorf("read archive identity %s: %w: %v", IdentityKey, ErrCorrupt, err)
	}
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("archive identity %s: %w", IdentityKey, err)
	}
	return &Archive{Storage: st, Identity: id}, nil
}

// InitArchive opens the archive for the cluster want describes, creating the identity
// on first use. An archive that belongs to another cluster (system identifier, PostgreSQL
// major version or WAL segment size differ) is refused.
func InitArchive(ctx context.Context, st storage.Storage, want Identity, key Key) (*Archive, error) {
	want.FormatVersion = FormatVersion
	want.EncryptionKeyID = ""
	if key != nil {
		want.EncryptionKeyID = key.ID()
	}
	if want.Compression == "" {
		want.Compression = CompressionZstd
	}
	if err := want.Validate(); err != nil {
		return nil, err
	}
	a, err := readIdentity(ctx, st)
	if errors.Is(err, ErrNoIdentity) {
		if want.CreatedAt.IsZero() {
			want.CreatedAt = time.Now().UTC()
		}
		data, _ := json.MarshalIndent(want, "", "  ")
		if err := putSmall(ctx, st, IdentityKey, data, CompressionNone, nil); err != nil {
			return nil, fmt.Errorf("write archive identity: %w", err)
		}
		return &Archive{Storage: st, Identity: want, Key: key}, nil
	}
	if err != nil {
		return nil, err
	}
	have := a.Identity
	switch {
	case have.SystemIdentifier != want.SystemIdentifier:
		return nil, fmt.Errorf("this archive belongs to the cluster with system identifier %s, but the server has %s: point this server at its own archive (a different bucket prefix or directory): %w", have.SystemIdentifier, want.SystemIdentifier, ErrIdentityMismatch)
	case have.PostgresVersion != want.PostgresVersion:
		return nil, fmt.Errorf("this archive holds PostgreSQL %d WAL, but the server runs PostgreSQL %d: use a new archive after a major upgrade: %w", have.PostgresVersion, want.PostgresVersion, ErrIdentityMismatch)
	case have.WALSegmentSize != want.WALSegmentSize:
		return nil, fmt.Errorf("this archive holds %d-byte WAL segments, but the server uses %d-byte segments: %w", have.WALSegmentSize, want.WALSegmentSize, ErrIdentityMismatch)
	}
	if err := checkArchiveKey(have.EncryptionKeyID, key, true); err != nil {
		return nil, err
	}
	a.Key = key
	if have.FormatVersion < FormatVersion {
		// Move the identity on before anything of the new format is stored (see FormatVersion).
		up := have
		up.FormatVersion = FormatVersion
		data, _ := json.MarshalIndent(up, "", "  ")
		if err := putSmall(ctx, st, IdentityKey, data, CompressionNone, nil); err != nil {
			return nil, fmt.Errorf("move the archive from format version %d to %d: %w", have.FormatVersion, FormatVersion, err)
		}
		a.Identity, a.UpgradedFrom = up, have.FormatVersion
	}
	return a, nil
}

// PutResult says what an upload did.
type PutResult struct {
	RawBytes    uint64
	StoredBytes uint64
	// SHA256 is the checksum of the uncompressed bytes (zero when AlreadyStored).
	SHA256 [32]byte
	// AlreadyStored is true when an identical object was already there and nothing was written.
	AlreadyStored bool
}

// PutImmutable stores an object that must never change once written (a complete segment,
// a history file). Storing the same bytes again succeeds without writing; different bytes
// fail with ErrConflict and the stored object is kept. r is read twice when the key exists.
//
// On a store known to honour conditional writes (ProbeConditionalWrites), PutIfAbsent
// decides atomically, so of two racing writers one stores and the other compares, and there
// is no Stat first (it would add a round trip to every segment). On any other store
// (unknown, or one that ignores If-None-Match and would replace the object) the key is
// checked first and an existing object is compared, never replaced; only two writers racing
// between that check and the write could both write, which one writer per archive prevents.
func (a *Archive) PutImmutable(ctx context.Context, key string, r io.ReadSeeker) (PutResult, error) {
	exists := false
	if !a.conditionalWrites() {
		switch _, err := a.Storage.Stat(ctx, key); {
		case err == nil:
			exists = true
		case !errors.Is(err, storage.ErrNotFound):
			return PutResult{}, fmt.Errorf("put %s: check for a stored copy: %w", key, err)
		}
	}
	if !exists {
		res, err := putFramed(ctx, a.Storage.PutIfAbsent, key, r, a.Identity.Compression, a.Key)
		if !errors.Is(err, storage.ErrExists) {
			return res, err
		}
	}
	ours, err := hashReader(r)
	if err != nil {
		return PutResult{}, fmt.Errorf("put %s: hash local copy: %w", key, err)
	}
	theirs, err := a.objectSum(ctx, key)
	if err != nil && !errors.Is(err, ErrCorrupt) {
		return PutResult{}, fmt.Errorf("put %s: compare with stored copy: %w", key, err)
	}
	if err == nil && theirs == ours {
		return PutResult{AlreadyStored: true}, nil
	}
	if err != nil {
		return PutResult{}, fmt.Errorf("put %s: %w: the stored copy fails verification (%v); it is kept for inspection", key, ErrConflict, err)
	}
	return PutResult{}, fmt.Errorf("put %s: %w (stored SHA-256 %x, local %x); the stored object is kept", key, ErrConflict, theirs[:8], ours[:8])
}

// Put frames, compresses and stores the stream under key, replacing what was there.
func (a *Archive) Put(ctx context.Context, key string, r io.Reader) (PutResult, error) {
	return PutObject(ctx, a.Storage, key, r, a.Identity.Compression, a.Key)
}

// PutPrecompressed stores under key a stream that is already zstd-compressed (see
// NewPrecompressedObjectWriterKey), replacing what was there. It is for zstd archives only:
// an archive with compression "none" stores what it is given as it is.
func (a *Archive) PutPrecompressed(ctx context.Context, key string, r io.Reader) (PutResult, error) {
	if a.Identity.Compression != CompressionZstd {
		return PutResult{}, fmt.Errorf("put %s: the archive's compression is %q, not zstd: precompressed objects are refused", key, a.Identity.Compression)
	}
	return putWith(ctx, a.Storage.Put, key, r, func(w io.Writer) (*ObjectWriter, error) { return NewPrecompressedObjectWriterKey(w, a.Key) })
}

// PutObject frames, compresses (and with a key, encrypts) and stores a stream of any length
// under key in bounded memory.
func PutObject(ctx context.Context, st storage.Storage, key string, r io.Reader, c Compression, k Key) (PutResult, error) {
	return putFramed(ctx, st.Put, key, r, c, k)
}

// Get verifies and copies the object's payload to w. Bytes reach w before verification
// ends: write to a temporary place and keep it only when Get returns nil.
func (a *Archive) Get(ctx context.Context, key string, w io.Writer) (int64, error) {
	return GetObject(ctx, a.Storage, key, w, a.Key)
}

// Reader starts verifying (and decrypting) an object read from r.
func (a *Archive) Reader(r io.Reader, key string) (*ObjectReader, error) {
	return NewObjectReaderKey(r, key, a.Key)
}

// GetObject verifies and copies an object's payload to w; see Archive.Get.
func GetObject(ctx context.Context, st storage.Storage, key string, w io.Writer, k Key) (int64, error) {
	rc, err := st.Get(ctx, key)
	if err != nil {
		return 0, err
	}
	defer rc.Close()
	or, err := NewObjectReaderKey(rc, key, k)
	if err != nil {
		return 0, err
	}
	defer or.Close()
	n, err := io.Copy(w, or)
	if err != nil {
		return n, fmt.Errorf("read %s: %w", key, err)
	}
	return n, nil
}

func (a *Archive) objectSum(ctx context.Context, key string) ([32]byte, error) {
	h := sha256.New()
	if _, err := a.Get(ctx, key, h); err != nil {
		return [32]byte{}, err
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, nil
}

func hashReader(r io.ReadSeeker) ([32]byte, error) {
	var s [32]byte
	if _, err := r.Seek(0, io.SeekStart); err != nil {
		return s, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		return s, err
	}
	copy(s[:], h.Sum(nil))
	return s, nil
}

// marshalJSON encodes v as the archive's JSON objects are written.
func marshalJSON(v any) ([]byte, error) {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return data, nil
}

// putFramedBytes frames (uncompressed) and stores data with put (Put or PutIfAbsent).
func putFramedBytes(ctx context.Context, put func(context.Context, string, io.Reader) error, key string, data []byte, k Key) (PutResult, error) {
	return putFramed(ctx, put, key, bytes.NewReader(data), CompressionNone, k)
}

func putSmall(ctx context.Context, st storage.Storage, key string, data []byte, c Compression, k Key) error {
	_, err := PutObject(ctx, st, key, bytes.NewReader(data), c, k)
	return err
}

func getSmall(ctx context.Context, st storage.Storage, key string, k Key) ([]byte, error) {
	var b bytes.Buffer
	_, err := GetObject(ctx, st, key, &b, k)
	return b.Bytes(), err
}

// PutJSON stores v as a framed JSON object.
func (a *Archive) PutJSON(ctx context.Context, key string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode %s: %w", key, err)
	}
	return putSmall(ctx, a.Storage, key, data, CompressionNone, a.Key)
}

// GetJSON reads and verifies a framed JSON object into v.
func (a *Archive) GetJSON(ctx context.Context, key string, v any) error {
	data, err := getSmall(ctx, a.Storage, key, a.Key)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("%s: %w: %v", key, ErrCorrupt, err)
	}
	return nil
}

// PutHistory stores timeline tli's history file (immutable).
func (a *Archive) PutHistory(ctx context.Context, tli uint32, content []byte) error {
	_, err := a.PutImmutable(ctx, HistoryKey(tli), bytes.NewReader(content))
	return err
}

// History reads timeline tli's history. Timeline 1 has an empty history.
func (a *Archive) History(ctx context.Context, tli uint32) (TimelineHistory, error) {
	if tli == 1 {
		return nil, nil
	}
	data, err := getSmall(ctx, a.Storage, HistoryKey(tli), a.Key)
	if err != nil {
		return nil, fmt.Errorf("read history of timeline %d: %w", tli, err)
	}
	h, err := ParseTimelineHistory(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", HistoryKey(tli), err)
	}
	return h, nil
}
