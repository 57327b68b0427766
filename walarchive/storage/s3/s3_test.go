package s3_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/s3"
	"github.com/kcbackup/kcbackup/walarchive/storage/storagetest"
)

const mib = 1 << 20

// useMinIOEnv points the AWS credential chain of this process at m, isolated from the
// developer's own AWS configuration.
func useMinIOEnv(t *testing.T, m *harness.MinIO) {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	for _, kv := range m.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// newStore opens a Store on a fresh bucket of m; cfg's Bucket and ForcePathStyle are set here.
func newStore(t *testing.T, m *harness.MinIO, cfg s3.Config) (*s3.Store, s3.Config) {
	t.Helper()
	cfg.Bucket = m.NewBucket(t)
	cfg.ForcePathStyle = true
	st, err := s3.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New(%+v): %v", cfg, err)
	}
	return st, cfg
}

func TestConformance(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	storagetest.Run(t, func(t *testing.T) storage.Storage {
		st, _ := newStore(t, m, s3.Config{Prefix: "clusters/main", PartSize: 5 * mib})
		return st
	})
}

func TestS3MultipartUploadRoundTripsStreamOfUnknownLength(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, cfg := newStore(t, m, s3.Config{Prefix: "p", PartSize: 5 * mib, Concurrency: 3})
	ctx := context.Background()

	h := sha256.New()
	src := io.TeeReader(newRandomStream(40*mib, 1), h)
	if err := st.Put(ctx, "base/big", src); err != nil {
		t.Fatalf("Put 40 MiB: %v", err)
	}
	want := h.Sum(nil)

	rc, err := st.Get(ctx, "base/big")
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	defer rc.Close()
	h2 := sha256.New()
	n, err := io.Copy(h2, rc)
	if err != nil || n != 40*mib || string(h2.Sum(nil)) != string(want) {
		t.Fatalf("Get returned %d bytes (err %v), checksum match %v; want the 40 MiB written", n, err, string(h2.Sum(nil)) == string(want))
	}

	// The object sits under the prefix and was stored as 8 parts of 5 MiB.
	head, err := m.Client().HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(cfg.Bucket), Key: aws.String("p/base/big")})
	if err != nil {
		t.Fatalf("HeadObject p/base/big: %v", err)
	}
	if etag := aws.ToString(head.ETag); !strings.HasSuffix(strings.Trim(etag, `"`), "-8") {
		t.Errorf("ETag %s does not name an 8-part multipart upload", etag)
	}
	assertNoMultipartUploads(t, m, cfg.Bucket)
}

func TestS3PutOfExactlyOnePartIsASingleRequest(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, cfg := newStore(t, m, s3.Config{PartSize: 5 * mib})
	ctx := context.Background()
	if err := st.Put(ctx, "seg", newRandomStream(5*mib, 2)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	head, err := m.Client().HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(cfg.Bucket), Key: aws.String("seg")})
	if err != nil {
		t.Fatalf("HeadObject: %v", err)
	}
	if etag := aws.ToString(head.ETag); strings.Contains(etag, "-") || aws.ToInt64(head.ContentLength) != 5*mib {
		t.Errorf("object ETag %s size %d; want a single-part object of 5 MiB", etag, aws.ToInt64(head.ContentLength))
	}
}

func TestS3PutFromFailingReaderAbortsMultipartUpload(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, cfg := newStore(t, m, s3.Config{PartSize: 5 * mib, Concurrency: 2})
	ctx := context.Background()
	if err := st.Put(ctx, "wal/seg", strings.NewReader("old")); err != nil {
		t.Fatalf("Put old: %v", err)
	}

	broken := errors.New("source broke")
	src := io.MultiReader(newRandomStream(17*mib, 3), failingReader{broken}) // 3 full parts, then failure
	err := st.Put(ctx, "wal/seg", src)
	if !errors.Is(err, broken) {
		t.Fatalf("Put from a failing reader: err = %v; want it to wrap %v", err, broken)
	}
	if !strings.Contains(err.Error(), "wal/seg") {
		t.Errorf("error %q does not name the key", err)
	}
	if got := readAll(t, st, "wal/seg"); got != "old" {
		t.Errorf("failed Put changed the existing object to %d bytes", len(got))
	}
	err = st.Put(ctx, "wal/new", io.MultiReader(newRandomStream(17*mib, 4), failingReader{broken}))
	if !errors.Is(err, broken) {
		t.Fatalf("Put of a new key from a failing reader: err = %v; want %v", err, broken)
	}
	if _, err := st.Stat(ctx, "wal/new"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after failed Put: %v; want ErrNotFound", err)
	}
	assertNoMultipartUploads(t, m, cfg.Bucket, "wal/seg", "wal/new")
}

func TestS3PutWithContextCancelledMidwayAbortsMultipartUpload(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, cfg := newStore(t, m, s3.Config{PartSize: 5 * mib, Concurrency: 2})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &cancelAfter{r: newRandomStream(60*mib, 5), after: 17 * mib, cancel: cancel}
	err := st.Put(ctx, "wal/cancelled", src)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context: err = %v; want context.Canceled", err)
	}
	if _, err := st.Stat(context.Background(), "wal/cancelled"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat after cancelled Put: %v; want ErrNotFound", err)
	}
	assertNoMultipartUploads(t, m, cfg.Bucket, "wal/cancelled")
}

func TestS3WrongSecretKeyErrorDoesNotContainSecret(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	bucket := m.NewBucket(t)
	const wrong = "wrong-secret-5f1d0c2a9b7e4d3c"
	t.Setenv("AWS_SECRET_ACCESS_KEY", wrong)
	st, err := s3.New(context.Background(), s3.Config{Bucket: bucket, ForcePathStyle: true, MaxAttempts: 1})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx := context.Background()
	errs := map[string]error{"Put": st.Put(ctx, "k", strings.NewReader("x"))}
	_, errs["Get"] = st.Get(ctx, "k")
	_, errs["Stat"] = st.Stat(ctx, "k")
	_, errs["List"] = st.List(ctx, "")
	for op, err := range errs {
		if err == nil {
			t.Errorf("%s with a wrong secret key succeeded", op)
			continue
		}
		t.Logf("%s: %v", op, err)
		if errors.Is(err, storage.ErrNotFound) {
			t.Errorf("%s with a wrong secret key: %v; must not look like a missing object", op, err)
		}
		for _, secret := range []string{wrong, m.SecretKey()} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s error contains a secret key: %v", op, err)
			}
		}
		if !strings.Contains(err.Error(), bucket) {
			t.Errorf("%s error %q does not name the bucket", op, err)
		}
	}
}

func TestS3MissingBucketIsNotReportedAsMissingObject(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, err := s3.New(context.Background(), s3.Config{Bucket: "no-such-bucket", ForcePathStyle: true, MaxAttempts: 1})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx := context.Background()
	if _, err := st.Stat(ctx, "k"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Stat in a missing bucket: %v; want an error other than ErrNotFound", err)
	}
	if _, err := st.Get(ctx, "k"); err == nil || errors.Is(err, storage.ErrNotFound) {
		t.Errorf("Get in a missing bucket: %v; want an error other than ErrNotFound", err)
	}
}

func TestS3ListReturnsKeysRelativeToPrefixAndSkipsOthers(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, cfg := newStore(t, m, s3.Config{Prefix: "/a/b/"})
	ctx := context.Background()
	for _, k := range []string{"wal/2", "wal/1", "backups/x"} {
		if err := st.Put(ctx, k, strings.NewReader(k)); err != nil {
			t.Fatalf("Put %s: %v", k, err)
		}
	}
	// Objects outside the prefix, and a console-style directory marker inside it.
	for _, k := range []string{"a/bc/wal/9", "other/wal/1", "a/b/wal/dir/"} {
		if _, err := m.Client().PutObject(ctx, &awss3.PutObjectInput{Bucket: aws.String(cfg.Bucket), Key: aws.String(k), Body: strings.NewReader("")}); err != nil {
			t.Fatalf("PutObject %s: %v", k, err)
		}
	}
	list, err := st.List(ctx, "wal/")
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var keys []string
	for _, o := range list {
		keys = append(keys, o.Key)
		if o.ModTime.IsZero() || o.Size != int64(len(o.Key)) {
			t.Errorf("List entry %+v: want size %d and a modification time", o, len(o.Key))
		}
	}
	if got := strings.Join(keys, ","); got != "wal/1,wal/2" {
		t.Errorf("List(wal/) keys = %s; want wal/1,wal/2", got)
	}
	if _, err := m.Client().HeadObject(ctx, &awss3.HeadObjectInput{Bucket: aws.String(cfg.Bucket), Key: aws.String("a/b/wal/1")}); err != nil {
		t.Errorf("object not stored under the prefix a/b/: %v", err)
	}
}

func TestS3BadCABundleErrorNamesFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing-ca.pem")
	notPEM := filepath.Join(dir, "not-a-ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{missing, notPEM} {
		_, err := s3.New(context.Background(), s3.Config{Bucket: "bucket", Region: "us-east-1", CABundle: path})
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("New with CABundle %s: err = %v; want an error naming the file", path, err)
		}
	}
}

func TestS3SelfSignedEndpointIsRefusedUnlessItsCAIsGiven(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Enough of HeadObject for Stat to succeed.
		w.Header().Set("Content-Length", "3")
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	t.Setenv("AWS_ACCESS_KEY_ID", "test")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "credentials"))
	cfg := s3.Config{Bucket: "bucket", Region: "us-east-1", Endpoint: srv.URL, ForcePathStyle: true, MaxAttempts: 1}
	ctx := context.Background()

	st, err := s3.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	_, err = st.Stat(ctx, "k")
	var unknownAuthority x509.UnknownAuthorityError
	if !errors.As(err, &unknownAuthority) {
		t.Fatalf("Stat against a self-signed endpoint: err = %v; want a certificate verification error", err)
	}

	ca := filepath.Join(t.TempDir(), "ca.pem")
	block := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, block, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.CABundle = ca
	st, err = s3.New(ctx, cfg)
	if err != nil {
		t.Fatalf("New with CABundle: %v", err)
	}
	if info, err := st.Stat(ctx, "k"); err != nil || info.Size != 3 {
		t.Fatalf("Stat with the endpoint's CA trusted = %+v, %v; want size 3", info, err)
	}
}

func TestS3ConfigValidate(t *testing.T) {
	valid := s3.Config{Bucket: "my-bucket.1"}
	tests := []struct {
		name    string
		mutate  func(*s3.Config)
		wantErr string // substring naming the field; "" means valid
	}{
		{"minimal", func(*s3.Config) {}, ""},
		{"all fields at bounds", func(c *s3.Config) {
			c.Prefix, c.Region, c.Endpoint = "clusters/main/", "eu-west-1", "https://s3.example.com:9000"
			c.PartSize, c.Concurrency, c.MaxAttempts = s3.MaxPartSize, s3.MaxConcurrency, s3.MaxMaxAttempts
		}, ""},
		{"smallest part", func(c *s3.Config) { c.PartSize = s3.MinPartSize }, ""},
		{"missing bucket", func(c *s3.Config) { c.Bucket = "" }, "Bucket"},
		{"short bucket", func(c *s3.Config) { c.Bucket = "ab" }, "Bucket"},
		{"long bucket", func(c *s3.Config) { c.Bucket = strings.Repeat("a", 64) }, "Bucket"},
		{"uppercase bucket", func(c *s3.Config) { c.Bucket = "MyBucket" }, "Bucket"},
		{"bucket with slash", func(c *s3.Config) { c.Bucket = "a/b-c" }, "Bucket"},
		{"bucket ending in dash", func(c *s3.Config) { c.Bucket = "abc-" }, "Bucket"},
		{"bucket with adjacent dots", func(c *s3.Config) { c.Bucket = "a..b" }, "Bucket"},
		{"prefix with dot-dot", func(c *s3.Config) { c.Prefix = "a/../b" }, "Prefix"},
		{"prefix with empty segment", func(c *s3.Config) { c.Prefix = "a//b" }, "Prefix"},
		{"endpoint without scheme", func(c *s3.Config) { c.Endpoint = "s3.example.com" }, "Endpoint"},
		{"endpoint with ftp scheme", func(c *s3.Config) { c.Endpoint = "ftp://s3.example.com" }, "Endpoint"},
		{"endpoint without host", func(c *s3.Config) { c.Endpoint = "https://" }, "Endpoint"},
		{"endpoint with credentials", func(c *s3.Config) { c.Endpoint = "https://key:secret@s3.example.com" }, "Endpoint"},
		{"part too small", func(c *s3.Config) { c.PartSize = s3.MinPartSize - 1 }, "PartSize"},
		{"part too large", func(c *s3.Config) { c.PartSize = s3.MaxPartSize + 1 }, "PartSize"},
		{"negative part", func(c *s3.Config) { c.PartSize = -1 }, "PartSize"},
		{"negative concurrency", func(c *s3.Config) { c.Concurrency = -1 }, "Concurrency"},
		{"concurrency too high", func(c *s3.Config) { c.Concurrency = s3.MaxConcurrency + 1 }, "Concurrency"},
		{"negative attempts", func(c *s3.Config) { c.MaxAttempts = -1 }, "MaxAttempts"},
		{"too many attempts", func(c *s3.Config) { c.MaxAttempts = s3.MaxMaxAttempts + 1 }, "MaxAttempts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := valid
			tt.mutate(&cfg)
			err := cfg.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate(%+v) = %v; want nil", cfg, err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate(%+v) = %v; want an error naming %s", cfg, err, tt.wantErr)
			case tt.wantErr != "" && strings.Contains(err.Error(), "secret"):
				t.Fatalf("Validate error %q repeats credentials", err)
			}
		})
	}
}

func TestS3NewRejectsInvalidConfig(t *testing.T) {
	_, err := s3.New(context.Background(), s3.Config{Bucket: "ok-bucket", PartSize: 1})
	if err == nil || !strings.Contains(err.Error(), "PartSize") {
		t.Fatalf("New with PartSize 1: err = %v; want an error naming PartSize", err)
	}
}

// assertNoMultipartUploads fails the test if bucket holds an unfinished multipart upload,
// listing the whole bucket and, for servers that only list by exact key, each of keys.
func assertNoMultipartUploads(t *testing.T, m *harness.MinIO, bucket string, keys ...string) {
	t.Helper()
	for _, prefix := range append([]string{""}, keys...) {
		out, err := m.Client().ListMultipartUploads(context.Background(), &awss3.ListMultipartUploadsInput{
			Bucket: aws.String(bucket), Prefix: aws.String(prefix),
		})
		if err != nil {
			t.Fatalf("ListMultipartUploads(prefix %q): %v", prefix, err)
		}
		for _, u := range out.Uploads {
			t.Errorf("multipart upload %s of %s left in progress", aws.ToString(u.UploadId), aws.ToString(u.Key))
		}
	}
}

func readAll(t *testing.T, st storage.Storage, key string) string {
	t.Helper()
	rc, err := st.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("Get %s: %v", key, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", key, err)
	}
	return string(b)
}

// randomStream yields n deterministic pseudo-random bytes; it offers only Read, so the
// store cannot learn the length up front.
type randomStream struct {
	rng  *rand.ChaCha8
	left int64
}

func newRandomStream(n int64, seed byte) *randomStream {
	return &randomStream{rng: rand.NewChaCha8([32]byte{seed}), left: n}
}

func (s *randomStream) Read(p []byte) (int, error) {
	if s.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, _ := s.rng.Read(p)
	s.left -= int64(n)
	return n, nil
}

type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

// cancelAfter cancels a context once after bytes have been read, and keeps yielding data.
type cancelAfter struct {
	r      io.Reader
	read   int64
	after  int64
	cancel context.CancelFunc
}

func (c *cancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.read += int64(n)
	if c.read >= c.after {
		c.cancel()
	}
	return n, err
}

func TestS3RetriesRideOutAShortOutage(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, _ := newStore(t, m, s3.Config{PartSize: 5 * mib, MaxAttempts: 10})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- st.Put(ctx, "wal/during-outage", newRandomStream(12*mib, 6)) }()
	time.Sleep(time.Second)
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Put across a one-second outage with 10 attempts: %v", err)
	}
	if info, err := st.Stat(ctx, "wal/during-outage"); err != nil || info.Size != 12*mib {
		t.Fatalf("Stat after the outage = %+v, %v; want 12 MiB", info, err)
	}
}

func TestS3PutMemoryDoesNotGrowWithStreamLength(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, _ := newStore(t, m, s3.Config{PartSize: 5 * mib, Concurrency: 2})
	const size = 200 * mib
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if err := st.Put(context.Background(), "big", newRandomStream(size, 7)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	runtime.ReadMemStats(&after)
	// (Concurrency+1) part buffers plus the first part's growing buffer and the SDK's own
	// allocations: far below the stream's length.
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("Put of %d MiB allocated %d MiB", size/mib, allocated/mib)
	if allocated > size/4 {
		t.Fatalf("Put of %d MiB allocated %d MiB; want memory bounded by the part size, not the stream", size/mib, allocated/mib)
	}
}
