package harness

import "testing"

func TestReportsMajorAcceptsReleasesAndPreReleasesOfThatMajorOnly(t *testing.T) {
	for _, tc := range []struct {
		out   string
		major int
		want  bool
	}{
		{"postgres (PostgreSQL) 17.12 (Debian 17.12-0+deb13u1)\n", 17, true},
		{"postgres (PostgreSQL) 19rc1 (Debian 19~rc1-1)\n", 19, true},
		{"postgres (PostgreSQL) 19beta2\n", 19, true},
		{"postgres (PostgreSQL) 20devel\n", 20, true},
		{"postgres (PostgreSQL) 16.14\n", 16, true},
		{"postgres (PostgreSQL) 19rc1\n", 1, false},
		{"postgres (PostgreSQL) 190.1\n", 19, false},
		{"postgres (PostgreSQL) 18.6\n", 19, false},
		{"", 15, false},
	} {
		if got := reportsMajor([]byte(tc.out), tc.major); got != tc.want {
			t.Errorf("reportsMajor(%q, %d) = %v; want %v", tc.out, tc.major, got, tc.want)
		}
	}
}
