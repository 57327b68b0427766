package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// MinIOVersion is the MinIO release test/tools/install.sh builds into CacheDir.
const MinIOVersion = "v0.0.0-20260212201848-7aac2a2c5b7c"

// MinIORegion is the region the MinIO server and its clients use.
const MinIORegion = "us-east-1"

// minioStartTimeout bounds how long a (re)started server may take to answer its health check.
const minioStartTimeout = 60 * time.Second

// MinIO is a real MinIO server started for one test, listening on 127.0.0.1 with its own
// data directory. It is stopped by t.Cleanup; Stop and Start simulate an outage.
type MinIO struct {
	binary    string
	port      int
	console   int
	dataDir   string
	certsDir  string
	logPath   string
	accessKey string
	secretKey string
	client    *s3.Client

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

// StartMinIO starts a MinIO server from the cache and waits until it is live. A missing
// binary skips the test (fails it in CI). The server log is printed when the test fails.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	binary := filepath.Join(CacheDir(), "minio-"+MinIOVersion)
	if _, err := os.Stat(binary); err != nil {
		Require(t, "MinIO", fmt.Errorf("MinIO binary: %w", err))
	}
	dir := t.TempDir()
	m := &MinIO{
		binary:    binary,
		port:      FreePort(t),
		console:   FreePort(t),
		dataDir:   filepath.Join(dir, "data"),
		certsDir:  filepath.Join(dir, "certs"),
		logPath:   filepath.Join(dir, "minio.log"),
		accessKey: "kcbackup-test",
		secretKey: randomHex(t, 16),
	}
	for _, d := range []string{m.dataDir, m.certsDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatalf("create MinIO directory: %v", err)
		}
	}
	m.client = s3.New(s3.Options{
		Region:       MinIORegion,
		BaseEndpoint: aws.String(m.Endpoint()),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(m.accessKey, m.secretKey, ""),
	})

	// Registered before the server starts so that a failed start still shows the log.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := m.Stop(ctx); err != nil {
			t.Errorf("stop MinIO: %v", err)
		}
		if t.Failed() {
			t.Logf("MinIO log (%s):\n%s", m.logPath, m.logTail())
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), minioStartTimeout)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("start MinIO: %v", err)
	}
	return m
}

// Endpoint is the server's S3 URL, http://127.0.0.1:port.
func (m *MinIO) Endpoint() string {
	return "http://127.0.0.1:" + strconv.Itoa(m.port)
}

// AccessKey is the root user's access key.
func (m *MinIO) AccessKey() string { return m.accessKey }

// SecretKey is the root user's secret key.
func (m *MinIO) SecretKey() string { return m.secretKey }

// Client is an S3 client for the server, with root credentials and path-style addressing.
func (m *MinIO) Client() *s3.Client { return m.client }

// Env returns the environment variables that point an AWS SDK in a child process (or in
// this one, through t.Setenv) at the server with root credentials.
func (m *MinIO) Env() []string {
	return []string{
		"AWS_ACCESS_KEY_ID=" + m.accessKey,
		"AWS_SECRET_ACCESS_KEY=" + m.secretKey,
		"AWS_REGION=" + MinIORegion,
		"AWS_ENDPOINT_URL_S3=" + m.Endpoint(),
	}
}

// CreateBucket creates the bucket name, failing the test on error.
func (m *MinIO) CreateBucket(t testing.TB, name string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := m.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(name)}); err != nil {
		t.Fatalf("create bucket %s: %v", name, err)
	}
}

// NewBucket creates a bucket with a fresh unique name and returns the name.
func (m *MinIO) NewBucket(t testing.TB) string {
	t.Helper()
	name := "kcbackup-test-" + randomHex(t, 8)
	m.CreateBucket(t, name)
	return name
}

// Start starts the server, on the same ports and data directory as before, and waits until
// it is ready to serve requests. Starting a running server is an error.
func (m *MinIO) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return errors.New("MinIO is already running")
	}
	logFile, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open MinIO log: %w", err)
	}
	cmd := exec.Command(m.binary, "server",
		"--address", "127.0.0.1:"+strconv.Itoa(m.port),
		"--console-address", "127.0.0.1:"+strconv.Itoa(m.console),
		"--certs-dir", m.certsDir,
		m.dataDir)
	cmd.Env = append(minioBaseEnv(),
		"MINIO_ROOT_USER="+m.accessKey,
		"MINIO_ROOT_PASSWORD="+m.secretKey,
		"MINIO_BROWSER=off",
		"MINIO_UPDATE=off",
		"MINIO_REGION="+MinIORegion,
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// A test binary that dies (a timeout's panic, a kill) takes its MinIO with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("run %s: %w", m.binary, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	m.cmd, m.done = cmd, done

	if err := m.waitReady(ctx, done); err != nil {
		m.stopLocked(ctx)
		return fmt.Errorf("MinIO on %s did not become live (log %s): %w", m.Endpoint(), m.logPath, err)
	}
	return nil
}

// Stop stops the server (SIGTERM, then SIGKILL when ctx ends first) and waits for it to
// exit. Stopping a stopped server does nothing.
func (m *MinIO) Stop(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stopLocked(ctx)
}

func (m *MinIO) stopLocked(ctx context.Context) error {
	if m.cmd == nil {
		return nil
	}
	cmd, done := m.cmd, m.done
	m.cmd, m.done = nil, nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("MinIO did not exit on SIGTERM, killed: %w", ctx.Err())
	}
}

// waitReady polls until /minio/health/ready answers 200 and then an authenticated
// ListBuckets succeeds, until the process exits, or until ctx (bounded by
// minioStartTimeout) ends. Liveness is not enough: a live server still answers 503
// XMinioServerNotInitialized while it formats its drive. Nor is /ready alone: under load
// it answered 200 while the first CreateBucket still got that 503 (cold CI run,
// 2026-12-02).
func (m *MinIO) waitReady(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, minioStartTimeout)
	defer cancel()
	url := m.Endpoint() + "/minio/health/ready"
	client := &http.Client{Timeout: 2 * time.Second}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
				_, err = m.client.ListBuckets(lctx, &s3.ListBucketsInput{}, func(o *s3.Options) { o.RetryMaxAttempts = 1 })
				lcancel()
				if err == nil {
					return nil
				}
				err = fmt.Errorf("ListBuckets after /ready: %w", err)
			} else {
				err = fmt.Errorf("GET %s: %s", url, resp.Status)
			}
		}
		lastErr = err
		select {
		case <-exited:
			return errors.New("the server exited")
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", ctx.Err(), lastErr)
		case <-tick.C:
		}
	}
}

// logTail returns the end of the server log.
func (m *MinIO) logTail() string {
	b, err := os.ReadFile(m.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 16 << 10
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// minioBaseEnv is this process's environment without MINIO_* and AWS_* variables, so that
// the developer's own settings do not leak into the test server.
func minioBaseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "MINIO_") || strings.HasPrefix(kv, "AWS_") {
			continue
		}
		env = append(env, kv)
	}
	return env
}

// randomHex returns n random bytes, hex-encoded.
func randomHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random bytes: %v", err)
	}
	return hex.EncodeToString(b)
}
