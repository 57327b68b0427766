package s3

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// Bounds and defaults of Config.
const (
	// DefaultPartSize is the multipart part size used when Config.PartSize is zero.
	DefaultPartSize int64 = 16 << 20
	// MinPartSize is the smallest part S3 accepts for any part but the last.
	MinPartSize int64 = 5 << 20
	// MaxPartSize is the largest part S3 accepts.
	MaxPartSize int64 = 5 << 30
	// MaxParts is the largest number of parts in one multipart upload.
	MaxParts = 10000

	// DefaultConcurrency is the number of parts uploaded at once when Config.Concurrency is zero.
	DefaultConcurrency = 4
	// MaxConcurrency bounds Config.Concurrency; memory used by one Put is about
	// (Concurrency+1) * PartSize.
	MaxConcurrency = 64

	// DefaultMaxAttempts is the number of attempts per request when Config.MaxAttempts is zero.
	DefaultMaxAttempts = 5
	// MaxMaxAttempts bounds Config.MaxAttempts.
	MaxMaxAttempts = 20
)

// The values of Config.Checksums.
const (
	ChecksumsWhenRequired  = "when-required"
	ChecksumsWhenSupported = "when-supported"
)

// Config says where the archive lives in S3 and how to talk to it. Credentials are not part
// of it: they come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
// shared config files, web identity).
type Config struct {
	// Bucket is the bucket name (required): 3 to 63 lowercase letters, digits, '.' and '-',
	// starting and ending with a letter or digit.
	Bucket string
	// Prefix is the key prefix under which all objects live, without leading or trailing
	// slash (those are trimmed); empty means the bucket root.
	Prefix string
	// Region is the bucket's region; empty means the AWS chain (AWS_REGION, config files).
	Region string
	// Endpoint is the S3 endpoint URL (http or https), for S3-compatible stores; empty means
	// the AWS chain (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) or AWS itself.
	Endpoint string
	// ForcePathStyle addresses the bucket as https://endpoint/bucket/key rather than
	// https://bucket.endpoint/key; most S3-compatible stores need it.
	ForcePathStyle bool
	// CABundle is the path of a PEM file of certificate authorities trusted in addition to
	// the system's, for endpoints with a private CA. TLS is always verified.
	CABundle string
	// PartSize is the multipart part size in bytes: 0 means DefaultPartSize, otherwise
	// between MinPartSize and MaxPartSize. Streams shorter than PartSize are stored with one
	// PutObject; the largest object is MaxParts * PartSize.
	PartSize int64
	// Concurrency is the number of parts uploaded at once: 0 means DefaultConcurrency,
	// otherwise 1 to MaxConcurrency.
	Concurrency int
	// Checksums says when requests carry the SDK's CRC checksums and responses are checked
	// against them: ChecksumsWhenRequired (only where an S3 operation demands one),
	// ChecksumsWhenSupported (on every operation that takes one, the SDK's default since
	// 2025), or "" for the default: when-required for an Endpoint outside amazonaws.com,
	// because several S3-compatible stores (Ceph RGW, older MinIO, appliances) refuse or
	// mishandle the new checksum headers, otherwise the AWS chain's setting
	// (AWS_REQUEST_CHECKSUM_CALCULATION). kcbackup's own SHA-256 of every object is the
	// end-to-end check either way.
	Checksums string
	// MaxAttempts is the number of attempts per S3 request, retries included, with
	// exponential backoff between them: 0 means DefaultMaxAttempts, otherwise 1 to
	// MaxMaxAttempts.
	MaxAttempts int
}

// Validate checks every field against its bounds without touching the network or the file
// system, and reports all problems found, each naming its field.
func (c Config) Validate() error {
	var errs []error
	if err := validateBucket(c.Bucket); err != nil {
		errs = append(errs, err)
	}
	if p := strings.Trim(c.Prefix, "/"); p != "" {
		if err := storage.ValidateKey(p); err != nil {
			errs = append(errs, fmt.Errorf("s3 config: Prefix %q: expected a slash-separated path without empty, \".\" or \"..\" segments: %w", c.Prefix, err))
		}
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("s3 config: Endpoint %q: %w", c.Endpoint, err))
		case u.Scheme != "http" && u.Scheme != "https":
			errs = append(errs, fmt.Errorf("s3 config: Endpoint %q: expected an http:// or https:// URL", c.Endpoint))
		case u.Host == "":
			errs = append(errs, fmt.Errorf("s3 config: Endpoint %q: expected a host", c.Endpoint))
		case u.User != nil:
			errs = append(errs, errors.New("s3 config: Endpoint must not contain user information; credentials come from the AWS environment"))
		}
	}
	switch c.Checksums {
	case "", ChecksumsWhenRequired, ChecksumsWhenSupported:
	default:
		errs = append(errs, fmt.Errorf("s3 config: Checksums %q: expected %s, %s or empty (automatic)", c.Checksums, ChecksumsWhenRequired, ChecksumsWhenSupported))
	}
	if c.PartSize != 0 && (c.PartSize < MinPartSize || c.PartSize > MaxPartSize) {
		errs = append(errs, fmt.Errorf("s3 config: PartSize %d: expected 0 (default %d) or between %d and %d bytes", c.PartSize, DefaultPartSize, MinPartSize, MaxPartSize))
	}
	if c.Concurrency < 0 || c.Concurrency > MaxConcurrency {
		errs = append(errs, fmt.Errorf("s3 config: Concurrency %d: expected 0 (default %d) or between 1 and %d", c.Concurrency, DefaultConcurrency, MaxConcurrency))
	}
	if c.MaxAttempts < 0 || c.MaxAttempts > MaxMaxAttempts {
		errs = append(errs, fmt.Errorf("s3 config: MaxAttempts %d: expected 0 (default %d) or between 1 and %d", c.MaxAttempts, DefaultMaxAttempts, MaxMaxAttempts))
	}
	return errors.Join(errs...)
}

// withDefaults returns c with zero values replaced by defaults and Prefix normalised to
// "" or "path/".
func (c Config) withDefaults() Config {
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.Concurrency == 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if p := strings.Trim(c.Prefix, "/"); p != "" {
		c.Prefix = p + "/"
	} else {
		c.Prefix = ""
	}
	return c
}

// validateBucket applies the DNS-compatible bucket naming rules that AWS enforces for new
// buckets and MinIO enforces for all.
func validateBucket(b string) error {
	if b == "" {
		return errors.New("s3 config: Bucket is required")
	}
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("s3 config: Bucket %q: expected 3 to 63 characters, got %d", b, len(b))
	}
	for i := 0; i < len(b); i++ {
		ch := b[i]
		alnum := ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9'
		if !alnum && ch != '.' && ch != '-' {
			return fmt.Errorf("s3 config: Bucket %q: expected only lowercase letters, digits, '.' and '-'", b)
		}
		if (i == 0 || i == len(b)-1) && !alnum {
			return fmt.Errorf("s3 config: Bucket %q: expected to start and end with a letter or digit", b)
		}
	}
	if strings.Contains(b, "..") {
		return fmt.Errorf("s3 config: Bucket %q: expected no two adjacent dots", b)
	}
	return nil
}

// checksumMode resolves Checksums: "" becomes when-required for an endpoint outside AWS and
// stays "" (the AWS chain decides) otherwise.
func (c Config) checksumMode() string {
	if c.Checksums != "" || c.Endpoint == "" {
		return c.Checksums
	}
	u, err := url.Parse(c.Endpoint)
	if err != nil {
		return ChecksumsWhenRequired
	}
	host := strings.ToLower(u.Hostname())
	if strings.HasSuffix(host, ".amazonaws.com") || strings.HasSuffix(host, ".amazonaws.com.cn") {
		return ""
	}
	return ChecksumsWhenRequired
}
