package walarchive

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func TestPipeCarriesAStreamInOrderWithBoundedBuffer(t *testing.T) {
	data := make([]byte, 5<<20+123)
	rand.Read(data)
	r, w := Pipe(64 << 10)
	go func() {
		for p := data; len(p) > 0; {
			n := 1 + len(p)%70000
			if n > len(p) {
				n = len(p)
			}
			w.Write(p[:n])
			p = p[n:]
		}
		w.Close()
	}()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("pipe changed the stream (%d of %d bytes, %v)", len(got), len(data), err)
	}
	if cap(r.p.buf) > 2*(64<<10)+70000 {
		t.Fatalf("buffer grew to %d bytes", cap(r.p.buf))
	}
}

func TestPipeErrorsReachTheOtherSide(t *testing.T) {
	r, w := Pipe(1024)
	boom := errors.New("boom")
	w.Write([]byte("abc"))
	w.CloseWithError(boom)
	b, err := io.ReadAll(r)
	if string(b) != "abc" || !errors.Is(err, boom) {
		t.Fatalf("reader got %q, %v; want the bytes then the writer's error", b, err)
	}
	r2, w2 := Pipe(4)
	r2.CloseWithError(boom)
	if _, err := w2.Write(make([]byte, 100)); !errors.Is(err, boom) {
		t.Fatalf("writer after the reader closed: %v", err)
	}
}
