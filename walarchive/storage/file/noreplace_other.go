//go:build !linux

package file

func renameNoReplace(tmp, p string) error { return linkNoReplace(tmp, p) }
