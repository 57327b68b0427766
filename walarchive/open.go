package walarchive

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kcbackup/kcbackup/walarchive/storage"
	"github.com/kcbackup/kcbackup/walarchive/storage/file"
	"github.com/kcbackup/kcbackup/walarchive/storage/s3"
)

// StorageURLForms lists the storage URLs OpenStorage accepts, for error messages and help.
const StorageURLForms = "file:///absolute/path or s3://bucket[/prefix][?region=R&endpoint=URL&force-path-style=true&ca-file=/path&checksums=when-required|when-supported]"

// StorageLocation is a parsed storage URL.
type StorageLocation struct {
	// Scheme is "file" or "s3".
	Scheme string
	// Path is the directory for file URLs.
	Path string
	// S3 is the bucket configuration for s3 URLs; settings absent from the URL come from
	// the environment (see ParseStorageURL).
	S3 s3.Config
}

// ParseStorageURL parses a storage URL. It is the one place storage URLs are understood.
//
//   - file:///abs/path: a directory, typically a persistent volume.
//   - s3://bucket/prefix: an S3 bucket. Query parameters region, endpoint,
//     force-path-style, ca-file and checksums override the environment variables
//     AWS_REGION, AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL), KCBACKUP_S3_FORCE_PATH_STYLE,
//     KCBACKUP_S3_CA_FILE and KCBACKUP_S3_CHECKSUMS. Credentials always come from the AWS chain (environment,
//     files, web identity), never from the URL.
func ParseStorageURL(raw string, getenv func(string) string) (StorageLocation, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	bad := func(why string) (StorageLocation, error) {
		return StorageLocation{}, fmt.Errorf("invalid storage URL %q: %s; expected %s", redactURL(raw), why, StorageURLForms)
	}
	if raw == "" {
		return bad("it is empty")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("it does not parse")
	}
	if u.User != nil {
		return bad("credentials must not be part of the URL (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a credentials file)")
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" && u.Host != "localhost" {
			return bad("a file URL has no host (use three slashes: file:///path)")
		}
		if u.Path == "" || !filepath.IsAbs(u.Path) {
			return bad("the path must be absolute")
		}
		if u.RawQuery != "" {
			return bad("file URLs take no query parameters")
		}
		return StorageLocation{Scheme: "file", Path: filepath.Clean(u.Path)}, nil
	case "s3":
		if u.Host == "" {
			return bad("the bucket name is empty")
		}
		cfg := s3.Config{
			Bucket:   u.Host,
			Prefix:   strings.Trim(u.Path, "/"),
			Region:   getenv("AWS_REGION"),
			Endpoint: getenv("AWS_ENDPOINT_URL_S3"),
			CABundle: getenv("KCBACKUP_S3_CA_FILE"),
			// Checksums: see s3.Config.Checksums (default: when-required outside AWS).
			Checksums: getenv("KCBACKUP_S3_CHECKSUMS"),
		}
		if cfg.Endpoint == "" {
			cfg.Endpoint = getenv("AWS_ENDPOINT_URL")
		}
		if v := getenv("KCBACKUP_S3_FORCE_PATH_STYLE"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return StorageLocation{}, fmt.Errorf("invalid KCBACKUP_S3_FORCE_PATH_STYLE %q: expected true or false", v)
			}
			cfg.ForcePathStyle = b
		}
		q := u.Query()
		for k := range q {
			switch k {
			case "region":
				cfg.Region = q.Get(k)
			case "endpoint":
				cfg.Endpoint = q.Get(k)
			case "ca-file":
				cfg.CABundle = q.Get(k)
			case "checksums":
				cfg.Checksums = q.Get(k)
			case "force-path-style":
				b, err := strconv.ParseBool(q.Get(k))
				if err != nil {
					return bad("force-path-style must be true or false")
				}
				cfg.ForcePathStyle = b
			default:
				return bad(fmt.Sprintf("unknown query parameter %q (known: region, endpoint, force-path-style, ca-file, checksums)", k))
			}
		}
		if err := cfg.Validate(); err != nil {
			return StorageLocation{}, fmt.Errorf("invalid storage URL %q: %w", redactURL(raw), err)
		}
		return StorageLocation{Scheme: "s3", S3: cfg}, nil
	case "":
		return bad("it has no scheme (a relative path is not accepted)")
	default:
		return bad(fmt.Sprintf("unknown scheme %q", u.Scheme))
	}
}

// OpenStorage parses a storage URL and opens its backend. With
// KCBACKUP_STORAGE_COMPAT=ignore-conditional-writes the store behaves as one that ignores
// If-None-Match would (see storage.WithoutConditionalWrites): for testing the archive's
// safeguards against such stores.
func OpenStorage(ctx context.Context, raw string) (storage.Storage, error) {
	st, err := openStorage(ctx, raw)
	if err != nil {
		return nil, err
	}
	switch c := os.Getenv("KCBACKUP_STORAGE_COMPAT"); c {
	case "":
		return st, nil
	case "ignore-conditional-writes":
		return storage.WithoutConditionalWrites(st), nil
	default:
		return nil, fmt.Errorf("invalid KCBACKUP_STORAGE_COMPAT %q: expected ignore-conditional-writes or nothing", c)
	}
}

func openStorage(ctx context.Context, raw string) (storage.Storage, error) {
	loc, err := ParseStorageURL(raw, nil)
	if err != nil {
		return nil, err
	}
	switch loc.Scheme {
	case "file":
		return file.New(loc.Path)
	default:
		st, err := s3.New(ctx, loc.S3)
		if err != nil {
			return nil, fmt.Errorf("open storage %s: %w", redactURL(raw), err)
		}
		return st, nil
	}
}

// RedactURL returns a storage URL without user information, fit for logs and messages.
func RedactURL(raw string) string { return redactURL(raw) }

// redactURL removes any user information before a URL is shown in an error or log.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return raw
	}
	u.User = url.User("REDACTED")
	return u.String()
}
