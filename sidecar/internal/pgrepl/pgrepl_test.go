package pgrepl

import (
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"16MB": 16 << 20, "1GB": 1 << 30, "8kB": 8 << 10, "512B": 512, "1TB": 1 << 40} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "16", "MB", "16 MB", "-1MB", "1.5GB", "16mb"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted bad input", bad)
		}
	}
}

func TestParseMajorVersion(t *testing.T) {
	// Versions without a format table are refused by name (0 = refused).
	for in, want := range map[string]int{"15.18 (Debian 15.18-0+deb12u1)": 15, "16.0": 16, "17beta1": 17, "18devel": 18,
		"18.6": 18, "19beta1": 19, "19rc1": 19, "19.0": 19, "10.23": 0, "14.12": 0, "20devel": 0, "20beta1": 0, "garbage": 0} {
		got, err := ParseMajorVersion(in)
		if want == 0 {
			if err == nil {
				t.Errorf("ParseMajorVersion(%q) accepted %d", in, got)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("ParseMajorVersion(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
}

func TestParseReadSlotRow(t *testing.T) {
	info, err := ParseReadSlotRow([][]byte{nil, nil, nil})
	if err != nil || info.Exists {
		t.Fatalf("missing slot: %+v, %v", info, err)
	}
	info, err = ParseReadSlotRow([][]byte{[]byte("physical"), []byte("0/3000028"), []byte("2")})
	if err != nil || !info.Exists || info.RestartLSN != 0x3000028 || info.RestartTLI != 2 {
		t.Fatalf("physical slot: %+v, %v", info, err)
	}
	if _, err := ParseReadSlotRow([][]byte{[]byte("logical"), nil, nil}); err == nil || !strings.Contains(err.Error(), "physical") {
		t.Fatalf("logical slot: err = %v", err)
	}
	if _, err := ParseReadSlotRow([][]byte{[]byte("physical"), []byte("zz"), []byte("1")}); err == nil {
		t.Fatal("bad LSN accepted")
	}
}

func TestValidateSlotName(t *testing.T) {
	for _, ok := range []string{"kcbackup", "a_1"} {
		if err := ValidateSlotName(ok); err != nil {
			t.Errorf("ValidateSlotName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "Upper", "with-dash", "x y", strings.Repeat("a", 64), `a"b`} {
		if err := ValidateSlotName(bad); err == nil {
			t.Errorf("ValidateSlotName(%q) accepted", bad)
		}
	}
}

func TestParseConfigNeverEchoesPassword(t *testing.T) {
	_, err := ParseConfig("postgres://u:hunter2@host:notaport/db")
	if err == nil {
		t.Fatal("bad port accepted")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("error leaks the password: %v", err)
	}
}
