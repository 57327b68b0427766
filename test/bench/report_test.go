package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestUpdateReadmeReplacesOnlyTheGeneratedTable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "README.md")
	before := "# Title\n\nintro\n" + readmeBegin + "\nold table\n" + readmeEnd + "\n\nHow to read it: kept.\n"
	os.WriteFile(p, []byte(before), 0o644)
	tb := table{header: "kcbackup benchmark, today", rows: []row{{"m", "meth", "1 s", "<= 2 s", "met"}}, notes: []string{"a note"}}
	if err := updateReadme(p, tb); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	got := string(b)
	if strings.Contains(got, "old table") || !strings.Contains(got, "| m | meth | 1 s | <= 2 s | met |") ||
		!strings.HasPrefix(got, "# Title\n\nintro\n"+readmeBegin+"\n") || !strings.HasSuffix(got, readmeEnd+"\n\nHow to read it: kept.\n") {
		t.Fatalf("README after the update:\n%s", got)
	}
	os.WriteFile(p, []byte("# no markers\n"), 0o644)
	if err := updateReadme(p, tb); err == nil || !strings.Contains(err.Error(), "lacks") {
		t.Fatalf("err = %v; want a refusal naming the missing markers", err)
	}
	if b, _ := os.ReadFile(p); string(b) != "# no markers\n" {
		t.Fatalf("a README without markers was changed: %q", b)
	}
}
