package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

var _ storage.Storage = (*Store)(nil)

// Store is a storage.Storage on one S3 bucket prefix. It is safe for concurrent use.
type Store struct {
	client *s3.Client
	cfg    Config // with defaults applied; Prefix is "" or ends in "/"
	// checksums says whether multipart uploads carry CRC32 part checksums, following the
	// SDK's request checksum setting (AWS_REQUEST_CHECKSUM_CALCULATION).
	checksums bool
}

// New validates cfg, loads credentials and region from the standard AWS chain, and returns
// a Store. It does not contact S3: a wrong bucket or credentials show up on the first call.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	// Step 1: the HTTP client, with TLS verified against the system roots plus the CA bundle.
	httpClient, err := newHTTPClient(cfg.CABundle)
	if err != nil {
		return nil, err
	}

	// Step 2: credentials, region and endpoint from the AWS chain; Config fields override.
	opts := []func(*config.LoadOptions) error{
		config.WithHTTPClient(httpClient),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				// The client-side retry quota would turn a long outage into immediate
				// "retry quota exceeded" failures; callers pace their own retries.
				o.RateLimiter = ratelimit.None
			})
		}),
	}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	switch cfg.checksumMode() {
	case ChecksumsWhenRequired:
		opts = append(opts,
			config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
			config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired))
	case ChecksumsWhenSupported:
		opts = append(opts,
			config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenSupported),
			config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenSupported))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("s3 bucket %s: load AWS configuration: %w", cfg.Bucket, err)
	}
	if awsCfg.Region == "" {
		return nil, fmt.Errorf("s3 bucket %s: no region: set the storage region or AWS_REGION", cfg.Bucket)
	}

	// Step 3: the S3 client.
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
		o.UsePathStyle = cfg.ForcePathStyle
		// Whole-object checksums of multipart objects cannot be checked on Get; the SDK
		// would log a warning for each such Get, and a library does not log.
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return &Store{
		client:    client,
		cfg:       cfg,
		checksums: awsCfg.RequestChecksumCalculation != aws.RequestChecksumCalculationWhenRequired,
	}, nil
}

// newHTTPClient returns the SDK's default HTTP client, trusting the PEM certificates in
// caBundle in addition to the system roots when caBundle is not empty.
func newHTTPClient(caBundle string) (*awshttp.BuildableClient, error) {
	client := awshttp.NewBuildableClient()
	if caBundle == "" {
		return client, nil
	}
	pem, err := os.ReadFile(caBundle)
	if err != nil {
		return nil, fmt.Errorf("s3 CA bundle %s: %w", caBundle, err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("s3 CA bundle %s: no PEM certificate found", caBundle)
	}
	return client.WithTransportOptions(func(tr *http.Transport) {
		if tr.TLSClientConfig == nil {
			tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		tr.TLSClientConfig.RootCAs = pool
	}), nil
}

// objectKey returns the S3 key of key, after checking it is a valid storage key.
func (s *Store) objectKey(key string) (string, error) {
	if err := storage.ValidateKey(key); err != nil {
		return "", fmt.Errorf("s3 bucket %s: %w", s.cfg.Bucket, err)
	}
	return s.cfg.Prefix + key, nil
}

// where names an object in errors.
func (s *Store) where(objectKey string) string {
	return "s3://" + s.cfg.Bucket + "/" + objectKey
}

// Get opens the object under key. It returns an error wrapping storage.ErrNotFound when
// there is none; a missing bucket is a different error.
func (s *Store) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	ok, err := s.objectKey(key)
	if err != nil {
		return nil, err
	}
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(ok)})
	if err != nil {
		var noKey *types.NoSuchKey
		if errors.As(err, &noKey) || apiErrorCode(err) == "NoSuchKey" {
			return nil, fmt.Errorf("get %s: %w", s.where(ok), storage.ErrNotFound)
		}
		return nil, fmt.Errorf("get %s: %w", s.where(ok), err)
	}
	return out.Body, nil
}

// Stat describes the object under key. It returns an error wrapping storage.ErrNotFound
// when there is none; a missing bucket is a different error.
func (s *Store) Stat(ctx context.Context, key string) (storage.ObjectInfo, error) {
	ok, err := s.objectKey(key)
	if err != nil {
		return storage.ObjectInfo{}, err
	}
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(ok)})
	if err != nil {
		if !isHeadNotFound(err) {
			return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", s.where(ok), err)
		}
		// A HEAD response has no body, so a missing bucket also looks like "NotFound".
		// Only report the object as absent when the bucket is there.
		if _, berr := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.cfg.Bucket)}); berr != nil {
			return storage.ObjectInfo{}, fmt.Errorf("stat %s: object not found, and bucket check failed: %w", s.where(ok), berr)
		}
		return storage.ObjectInfo{}, fmt.Errorf("stat %s: %w", s.where(ok), storage.ErrNotFound)
	}
	return storage.ObjectInfo{
		Key:     key,
		Size:    aws.ToInt64(out.ContentLength),
		ModTime: aws.ToTime(out.LastModified),
	}, nil
}

// List returns every object whose key starts with prefix, sorted by key, with keys relative
// to the store's prefix. Objects whose names are not valid storage keys (such as the
// "dir/" markers some consoles create) are left out.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	full := s.cfg.Prefix + prefix
	var infos []storage.ObjectInfo
	pages := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket: aws.String(s.cfg.Bucket),
		Prefix: aws.String(full),
	})
	for pages.HasMorePages() {
		page, err := pages.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", s.where(full), err)
		}
		for _, obj := range page.Contents {
			name, found := strings.CutPrefix(aws.ToString(obj.Key), s.cfg.Prefix)
			if !found || !strings.HasPrefix(name, prefix) || storage.ValidateKey(name) != nil {
				continue
			}
			infos = append(infos, storage.ObjectInfo{
				Key:     name,
				Size:    aws.ToInt64(obj.Size),
				ModTime: aws.ToTime(obj.LastModified),
			})
		}
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Key < infos[j].Key })
	return infos, nil
}

// Delete removes the object under key; a missing object is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	ok, err := s.objectKey(key)
	if err != nil {
		return err
	}
	_, err = s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.Bucket), Key: aws.String(ok)})
	if err != nil {
		var noKey *types.NoSuchKey
		if errors.As(err, &noKey) || apiErrorCode(err) == "NoSuchKey" {
			return nil
		}
		return fmt.Errorf("delete %s: %w", s.where(ok), err)
	}
	return nil
}

// apiErrorCode returns the S3 error code of err, or "" when err is not an S3 API error.
func apiErrorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

// isHeadNotFound reports whether a HeadObject error is a 404.
func isHeadNotFound(err error) bool {
	var notFound *types.NotFound
	if errors.As(err, &notFound) {
		return true
	}
	switch apiErrorCode(err) {
	case "NotFound", "NoSuchKey":
		return true
	}
	var respErr *awshttp.ResponseError
	return errors.As(err, &respErr) && respErr.HTTPStatusCode() == http.StatusNotFound
}

// abortTimeout bounds the cleanup of a failed multipart upload, which runs even when the
// caller's context is cancelled.
const abortTimeout = time.Minute
