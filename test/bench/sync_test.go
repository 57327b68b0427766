package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseTransactionLogReadsLatenciesAndCountsFailures(t *testing.T) {
	log := "0 0 1520 0 1700000000 123456\n1 0 250000 0 1700000000 223456\n0 1 failed 0 1700000001 5 0\n"
	lat, failed, err := parseTransactionLog(strings.NewReader(log))
	if err != nil {
		t.Fatal(err)
	}
	if len(lat) != 2 || lat[0] != 0.00152 || lat[1] != 0.25 || failed != 1 {
		t.Fatalf("latencies %v, failed %d; want [0.00152 0.25], 1", lat, failed)
	}
	for _, bad := range []string{"0 0 12\n", "0 0 soon 0 1 2\n"} {
		if _, _, err := parseTransactionLog(strings.NewReader(bad)); err == nil || !strings.Contains(err.Error(), "line 1") {
			t.Errorf("%q: err = %v; want an error naming line 1", bad, err)
		}
	}
}

func TestSummarisePercentiles(t *testing.T) {
	var lat []float64
	for i := 1; i <= 100; i++ {
		lat = append(lat, float64(i)/1000)
	}
	s := summarise(lat, 3)
	if s.Transactions != 100 || s.Failed != 3 || *s.P50 != 0.050 || *s.P99 != 0.099 || *s.Max != 0.1 {
		t.Fatalf("summary %+v p50 %v p99 %v max %v", s, *s.P50, *s.P99, *s.Max)
	}
	if e := summarise(nil, 0); e.P99 != nil || e.Avg != nil {
		t.Fatalf("empty summary has figures: %+v", e)
	}
}

func TestEndLatencyPatternFindsTheCommitLine(t *testing.T) {
	for _, out := range []string{
		"statement latencies in milliseconds and failures:\n         0.002           0  \\set aid random(1, 100000 * :scale)\n         3.512           0  END;\n",
		"statement latencies in milliseconds:\n         0.002  \\set aid random(1, 100000 * :scale)\n         3.512  END;\n",
	} {
		m := endLatencyPattern.FindStringSubmatch(out)
		if m == nil || m[1] != "3.512" {
			t.Errorf("match %v in %q; want 3.512", m, out)
		}
	}
}

func TestHelpDefaultIntervalReadsTheFlagDefault(t *testing.T) {
	help := "      --partial-interval duration   upload the tail at most this often (0: as soon as WAL arrives) (default 200ms)\n      --pg-url string   x (default: libpq)\n"
	m := helpDefaultInterval.FindStringSubmatch(help)
	if m == nil || m[1] != "200ms" {
		t.Fatalf("match %v; want 200ms", m)
	}
}

func TestUploadCountersSplitPartsFromSegments(t *testing.T) {
	at := time.Now()
	before := uploadCounters{At: at, RawBytes: 10, Parts: 1}
	after := uploadCounters{At: at.Add(10 * time.Second), WALBytes: 32 << 20, RawBytes: 10 + 64<<20, Segments: 2, Parts: 41}
	u := after.sub(before)
	u.SegmentBytes = 16 << 20
	u.Objects = u.Segments + u.Parts
	if got := u.partRawBytes(); got != 32<<20 {
		t.Errorf("part raw bytes %v; want %v", got, 32<<20)
	}
	if got := u.putsPerSecond(); got != 4.2 {
		t.Errorf("PUTs/s %v; want 4.2", got)
	}
}

func TestAsyncRowSaysWhyTheRawTargetIsMissed(t *testing.T) {
	p99 := 0.21
	r := &Results{Async: []LagResult{{Method: methodKcbackup, PartialInterval: "200ms (default)", DefaultInterval: true, P50: &p99, P99: &p99, Max: &p99,
		Uploads: uploadCounters{WALBytes: 32 << 20, RawBytes: 64 << 20, Segments: 2, Parts: 100, Objects: 102, SegmentBytes: 16 << 20, Seconds: 20}}}}
	tb := buildTable(r)
	for _, row := range tb.rows {
		if strings.HasPrefix(row.measurement, "Asynchronous mode") {
			if !strings.HasPrefix(row.verdict, "MISSED") || !strings.Contains(row.verdict, "parts carried 1.00x and complete segments 1.00x") {
				t.Fatalf("verdict %q; want MISSED naming the parts and the complete segments", row.verdict)
			}
			return
		}
	}
	t.Fatal("no asynchronous-mode row")
}

func TestSplitAtSegmentEndsSeparatesSamplesWaitingForASegmentEnd(t *testing.T) {
	const seg = 100
	t0 := time.Now()
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	durables := []lsnSample{{at(0), 50}, {at(100), 100}, {at(200), 180}}
	lsns := []lsnSample{
		{at(10), 90},   // durable 50: same segment
		{at(20), 120},  // durable 50: ends in the next segment
		{at(110), 100}, // durable 100: ends exactly at the segment end it is in
		{at(150), 150}, // durable 100 (segment 1): same segment
	}
	within, across := splitAtSegmentEnds(lsns, durables, []float64{1, 2, 3, 4}, seg)
	if len(within) != 3 || len(across) != 1 || across[0] != 2 {
		t.Fatalf("within %v across %v; want [1 3 4] and [2]", within, across)
	}
}
