package storage

import (
	"fmt"
	"strings"
)

// ValidateKey reports whether key is an acceptable object key: non-empty, relative,
// slash-separated, with no empty, "." or ".." segment and no NUL or backslash.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("invalid object key %q: must not be empty", key)
	}
	if strings.ContainsAny(key, "\x00\\") {
		return fmt.Errorf("invalid object key %q: must not contain NUL or backslash", key)
	}
	for _, seg := range strings.Split(key, "/") {
		switch seg {
		case "", ".", "..":
			return fmt.Errorf("invalid object key %q: expected a relative slash-separated path without empty, \".\" or \"..\" segments", key)
		}
	}
	return nil
}
