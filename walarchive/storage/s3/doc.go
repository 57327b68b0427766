// Package s3 is the storage.Storage backend for Amazon S3 and S3-compatible object stores
// (MinIO, Ceph RGW, ...), built on aws-sdk-go-v2.
//
// It owns the mapping between the archive's flat keys and objects under one bucket prefix,
// the atomic upload of streams of unknown length (a single PutObject for small streams, a
// multipart upload that is always aborted on failure for large ones), conditional creation
// with If-None-Match: * (PutIfAbsent), the choice of the SDK's request checksums
// (Config.Checksums: only when required outside AWS), and the translation of S3 "no such
// key" and "precondition failed" answers into storage.ErrNotFound and storage.ErrExists.
//
// Credentials and region come from the standard AWS chain (environment variables, shared
// config files, web identity); they are never part of Config and never appear in errors.
// TLS is verified; Config.CABundle adds a private certificate authority. Parsing storage URLs
// into a Config is done by the caller.
package s3
