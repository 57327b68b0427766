package walarchive

import (
	"crypto/sha256"
	"hash"
)

type sumWriter struct{ h hash.Hash }

func newSumWriter() *sumWriter { return &sumWriter{h: sha256.New()} }

func (s *sumWriter) Write(p []byte) (int, error) { return s.h.Write(p) }

func (s *sumWriter) sum() []byte { return s.h.Sum(nil) }
