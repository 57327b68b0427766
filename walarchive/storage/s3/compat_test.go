package s3_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kcbackup/kcbackup/test/harness"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/s3"
	"github.com/kcbackup/kcbackup/walarchive/storage/storagetest"
)

// fakeS3 answers every request with 200 and records the requests' headers.
type fakeS3 struct {
	mu      sync.Mutex
	headers []http.Header
}

func (f *fakeS3) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	f.mu.Lock()
	f.headers = append(f.headers, r.Header.Clone())
	f.mu.Unlock()
	w.Header().Set("ETag", `"0123456789abcdef0123456789abcdef"`)
	w.WriteHeader(http.StatusOK)
}

func (f *fakeS3) last(t *testing.T) http.Header {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.headers) == 0 {
		t.Fatal("the fake S3 endpoint received no request")
	}
	return f.headers[len(f.headers)-1]
}

// isolateAWSEnv gives the AWS chain of this process an empty configuration plus env.
func isolateAWSEnv(t *testing.T, env map[string]string) {
	t.Helper()
	dir := t.TempDir()
	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
		"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_STS", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
		"AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION", "AWS_EC2_METADATA_DISABLED"} {
		t.Setenv(k, "")
		os.Unsetenv(k)
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true") // never ask 169.254.169.254
	t.Setenv("AWS_REGION", "us-east-1")
	for k, v := range env {
		t.Setenv(k, v)
	}
}

func checksumHeaders(h http.Header) []string {
	var found []string
	for k, v := range h {
		lk := strings.ToLower(k)
		if strings.Contains(lk, "checksum") || lk == "x-amz-trailer" || (lk == "content-encoding" && strings.Contains(strings.Join(v, ","), "aws-chunked")) {
			found = append(found, k)
		}
	}
	return found
}

func TestS3ChecksumHeadersFollowTheChecksumsSetting(t *testing.T) {
	fake := &fakeS3{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	isolateAWSEnv(t, map[string]string{"AWS_ACCESS_KEY_ID": "AKIDTEST", "AWS_SECRET_ACCESS_KEY": "secret"})
	for _, c := range []struct {
		setting string
		want    bool
	}{{"", false}, {s3.ChecksumsWhenRequired, false}, {s3.ChecksumsWhenSupported, true}} {
		st, err := s3.New(context.Background(), s3.Config{Bucket: "bucket", Endpoint: srv.URL, ForcePathStyle: true, Checksums: c.setting})
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Put(context.Background(), "wal/x", strings.NewReader("payload")); err != nil {
			t.Fatalf("Checksums %q: Put: %v", c.setting, err)
		}
		got := checksumHeaders(fake.last(t))
		if (len(got) > 0) != c.want {
			t.Errorf("Checksums %q on a non-AWS endpoint: checksum headers %v; want present=%v", c.setting, got, c.want)
		}
	}
	if err := (s3.Config{Bucket: "bucket", Checksums: "always"}).Validate(); err == nil || !strings.Contains(err.Error(), "Checksums") {
		t.Errorf("Validate of Checksums \"always\": %v; want an error naming the field", err)
	}
}

// TestS3CredentialsFromWebIdentityAndPodIdentity follows the SDK's default chain as IRSA
// (a projected service account token and a role) and EKS Pod Identity (a credentials
// endpoint and its token file) set it up, with STS and the pod identity agent played by
// servers on loopback.
func TestS3CredentialsFromWebIdentityAndPodIdentity(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	os.WriteFile(tokenFile, []byte("service-account-jwt"), 0o600)

	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		if r.Form.Get("Action") != "AssumeRoleWithWebIdentity" || r.Form.Get("WebIdentityToken") != "service-account-jwt" {
			http.Error(w, "unexpected STS request", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprint(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleWithWebIdentityResult>
<Credentials><AccessKeyId>AKIDWEBIDENTITY</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>web-session</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>
<AssumedRoleUser><Arn>arn:aws:sts::123456789012:assumed-role/kcbackup/test</Arn><AssumedRoleId>AROATEST:test</AssumedRoleId></AssumedRoleUser>
</AssumeRoleWithWebIdentityResult><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`)
	}))
	defer sts.Close()
	agent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "service-account-jwt" {
			http.Error(w, "missing token", http.StatusUnauthorized)
			return
		}
		fmt.Fprint(w, `{"AccessKeyId":"AKIDPODIDENTITY","SecretAccessKey":"s","Token":"pod-session","Expiration":"2099-01-01T00:00:00Z"}`)
	}))
	defer agent.Close()

	for name, c := range map[string]struct {
		env           map[string]string
		keyID, tokenV string
	}{
		"web identity (IRSA)": {map[string]string{"AWS_WEB_IDENTITY_TOKEN_FILE": tokenFile, "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/kcbackup",
			"AWS_ROLE_SESSION_NAME": "test", "AWS_ENDPOINT_URL_STS": sts.URL}, "AKIDWEBIDENTITY", "web-session"},
		"EKS Pod Identity": {map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": agent.URL + "/v1/credentials",
			"AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": tokenFile}, "AKIDPODIDENTITY", "pod-session"},
	} {
		t.Run(name, func(t *testing.T) {
			fake := &fakeS3{}
			srv := httptest.NewServer(fake)
			defer srv.Close()
			isolateAWSEnv(t, c.env)
			st, err := s3.New(context.Background(), s3.Config{Bucket: "bucket", Endpoint: srv.URL, ForcePathStyle: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Put(context.Background(), "wal/x", strings.NewReader("payload")); err != nil {
				t.Fatalf("Put: %v", err)
			}
			h := fake.last(t)
			if auth := h.Get("Authorization"); !strings.Contains(auth, "Credential="+c.keyID+"/") {
				t.Errorf("request signed with %q; want the credentials from %s (%s)", auth, name, c.keyID)
			}
			if tok := h.Get("X-Amz-Security-Token"); tok != c.tokenV {
				t.Errorf("session token %q; want %q", tok, c.tokenV)
			}
		})
	}
}

func TestS3PutImmutableRaceHasOneWinnerOnMinIO(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, _ := newStore(t, m, s3.Config{PartSize: 5 << 20})
	ctx := context.Background()
	a, err := walarchive.InitArchive(ctx, st, walarchive.Identity{SystemIdentifier: "7", PostgresVersion: 15, WALSegmentSize: 16 << 20}, nil)
	if err != nil {
		t.Fatal(err)
	}
	key := walarchive.SegmentKey(1, 3, 16<<20)
	errs := storagetest.Race(4, func(i int) error {
		// Random bytes: the framed segment exceeds the part size (multipart upload).
		seg := make([]byte, 16<<20)
		io.ReadFull(newRandomStream(16<<20, byte(i+1)), seg)
		_, err := a.PutImmutable(ctx, key, bytes.NewReader(seg))
		return err
	})
	storagetest.OneWinner(t, errs, walarchive.ErrConflict)
	if _, err := a.Get(ctx, key, io.Discard); err != nil {
		t.Fatalf("stored segment does not verify: %v", err)
	}
}

// On MinIO the probe finds conditional writes honoured; on the same MinIO seen as a store
// that ignores If-None-Match (older MinIO, Ceph RGW), it finds them ignored, and an
// immutable object is still never replaced by other bytes (docs/reliability.md 31).
func TestS3ImmutableObjectsOnAStoreThatIgnoresConditionalWrites(t *testing.T) {
	m := harness.StartMinIO(t)
	useMinIOEnv(t, m)
	st, _ := newStore(t, m, s3.Config{})
	ctx := context.Background()
	id := walarchive.Identity{SystemIdentifier: "7", PostgresVersion: 15, WALSegmentSize: 16 << 20}
	a, err := walarchive.InitArchive(ctx, st, id, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.ProbeConditionalWrites(ctx); err != nil || c != walarchive.ConditionalHonoured {
		t.Fatalf("probe on MinIO: %v, %v; want honoured", c, err)
	}
	old, err := walarchive.OpenArchive(ctx, storage.WithoutConditionalWrites(st), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := old.ProbeConditionalWrites(ctx); err != nil || c != walarchive.ConditionalIgnored {
		t.Fatalf("probe on a store ignoring If-None-Match: %v, %v; want ignored", c, err)
	}
	first := walarchive.TimelineHistory{{Parent: 1, SwitchPoint: 0x5000000, Reason: "production"}}.Format()
	if err := old.PutHistory(ctx, 2, first); err != nil {
		t.Fatal(err)
	}
	second := walarchive.TimelineHistory{{Parent: 1, SwitchPoint: 0x3000000, Reason: "copy"}}.Format()
	if err := old.PutHistory(ctx, 2, second); !errors.Is(err, walarchive.ErrConflict) {
		t.Fatalf("a second history of timeline 2: %v; want ErrConflict", err)
	}
	if h, err := a.History(ctx, 2); err != nil || h[0].SwitchPoint != 0x5000000 {
		t.Fatalf("stored history %v, %v; want the first", h, err)
	}
}
