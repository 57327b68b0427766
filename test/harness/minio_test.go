package harness

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

func TestMinIOServesS3AndKeepsDataAcrossRestart(t *testing.T) {
	m := StartMinIO(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	bucket := m.NewBucket(t)
	if !strings.HasPrefix(m.Endpoint(), "http://127.0.0.1:") {
		t.Fatalf("Endpoint() = %q, want http://127.0.0.1:<port>", m.Endpoint())
	}
	_, err := m.Client().PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String("a/b"), Body: strings.NewReader("hello"),
	})
	if err != nil {
		t.Fatalf("put: %v", err)
	}

	if err := m.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if resp, err := http.Get(m.Endpoint() + "/minio/health/live"); err == nil {
		resp.Body.Close()
		t.Fatalf("health check answered %s after Stop, want a connection error", resp.Status)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatalf("Start after Stop: %v", err)
	}

	out, err := m.Client().GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String("a/b")})
	if err != nil {
		t.Fatalf("get after restart: %v", err)
	}
	defer out.Body.Close()
	got, err := io.ReadAll(out.Body)
	if err != nil || string(got) != "hello" {
		t.Fatalf("object after restart = %q, %v; want %q", got, err, "hello")
	}
}

func TestMinIOStartTwiceIsAnError(t *testing.T) {
	m := StartMinIO(t)
	if err := m.Start(context.Background()); err == nil {
		t.Fatal("Start on a running server succeeded, want an error")
	}
}

func TestMinIOEnvNamesEndpointAndCredentials(t *testing.T) {
	m := StartMinIO(t)
	env := map[string]string{}
	for _, kv := range m.Env() {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("Env entry %q has no '='", kv)
		}
		env[k] = v
	}
	want := map[string]string{
		"AWS_ACCESS_KEY_ID":     m.AccessKey(),
		"AWS_SECRET_ACCESS_KEY": m.SecretKey(),
		"AWS_REGION":            "us-east-1",
		"AWS_ENDPOINT_URL_S3":   m.Endpoint(),
	}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("Env %s = %q, want %q", k, env[k], v)
		}
	}
	if m.SecretKey() == "" || m.AccessKey() == "" {
		t.Error("empty credentials")
	}
}

func TestMinIONewBucketNamesAreUnique(t *testing.T) {
	m := StartMinIO(t)
	a, b := m.NewBucket(t), m.NewBucket(t)
	if a == b {
		t.Fatalf("NewBucket returned %q twice", a)
	}
	_, err := m.Client().HeadBucket(context.Background(), &s3.HeadBucketInput{Bucket: aws.String(b)})
	if err != nil {
		t.Fatalf("bucket %s from NewBucket does not exist: %v", b, err)
	}
}
