package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/walarchive"
)

// TestRestorePlanEndpoint: the dry-run plan needs the admin token, refuses a malformed
// request or target before planning, answers a planner's refusal 422 (the client's
// ErrPlanRefused, with the planner's words) and a read failure 503 (not a refusal), and
// gives the plan otherwise; a standby's sidecar answers it too.
func TestRestorePlanEndpoint(t *testing.T) {
	stop := time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC)
	var asked []walarchive.RestoreRequest
	s := New(Config{Token: "tok", FetchToken: "fetch", Registry: prometheus.NewRegistry(), Backups: &fakeBackups{},
		Status: func() apiclient.Status { return apiclient.Status{} }, Ready: func() error { return nil },
		Standby: func() error { return errors.New("this pod's PostgreSQL is a standby") },
		PlanRestore: func(ctx context.Context, req walarchive.RestoreRequest) (walarchive.RestorePlan, error) {
			asked = append(asked, req)
			switch {
			case req.Timeline == 7:
				return walarchive.RestorePlan{}, fmt.Errorf("wrapped: %w", errors.Join(errors.New("invalid --timeline 7: the archive has timelines [1 2]"), walarchive.ErrRestoreRefused))
			case req.BackupID == "down":
				return walarchive.RestorePlan{}, errors.New("list wal/: connection refused")
			}
			return walarchive.RestorePlan{Backup: walarchive.BackupRecord{ID: "20261205T100000Z", StopTime: stop}, Timeline: 2,
				Stop: walarchive.StopAtTime, LastXact: stop.Add(time.Minute),
				Window: walarchive.Window{Timeline: 2, Earliest: stop, Latest: stop.Add(time.Hour)}}, nil
		}})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	url := srv.URL + "/v1/restore-plan"

	for tok, want := range map[string]int{"": http.StatusUnauthorized, "fetch": http.StatusForbidden} {
		if code, _ := do(t, http.MethodPost, url, tok, `{"target":"latest"}`); code != want {
			t.Errorf("token %q: %d, want %d", tok, code, want)
		}
	}
	for _, body := range []string{`not json`, `{"target":"latest","force":true}`, `{"target":"2026-12-05T10:30:00"}`, `{"target":""}`} {
		if code, msg := do(t, http.MethodPost, url, "tok", body); code != http.StatusBadRequest || !strings.Contains(msg, "expected") {
			t.Errorf("body %s: %d %s, want 400 saying what is expected", body, code, msg)
		}
	}
	if len(asked) != 0 {
		t.Fatalf("the planner ran for a refused request: %+v", asked)
	}

	c := apiclient.New(srv.URL, "tok", nil)
	p, err := c.PlanRestore(context.Background(), apiclient.RestorePlanRequest{Target: "2026-12-05T10:30:00Z", Timeline: 2})
	if err != nil || p.BackupID != "20261205T100000Z" || p.Timeline != 2 || p.Stop != "time" || !p.LastXact.Equal(stop.Add(time.Minute)) ||
		!p.Window.Latest.Equal(stop.Add(time.Hour)) || p.Window.Timeline != 2 {
		t.Errorf("plan = %+v, %v; want backup 20261205T100000Z on timeline 2 stopping at a time", p, err)
	}
	if len(asked) != 1 || asked[0].Timeline != 2 || asked[0].Target.Latest || !asked[0].Target.Time.Equal(stop.Add(30*time.Minute)) {
		t.Errorf("planner asked %+v; want timeline 2 at 10:30Z", asked)
	}
	_, err = c.PlanRestore(context.Background(), apiclient.RestorePlanRequest{Target: "latest", Timeline: 7})
	var pr *apiclient.PlanRefusedError
	if !errors.As(err, &pr) || !errors.Is(err, apiclient.ErrPlanRefused) || !strings.Contains(pr.Message, "invalid --timeline 7") {
		t.Errorf("refusal: %v; want a PlanRefusedError with the planner's words", err)
	}
	_, err = c.PlanRestore(context.Background(), apiclient.RestorePlanRequest{Target: "latest", BackupID: "down"})
	var se *apiclient.StatusError
	if errors.Is(err, apiclient.ErrPlanRefused) || !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable || !strings.Contains(se.Message, "connection refused") {
		t.Errorf("read failure: %v; want 503 naming the failure, not a refusal", err)
	}
}

// TestRestorePlanEndpointResolvesATransaction: an xid target reaches the planner parsed,
// and the answer names the commit it resolved to; a malformed one is refused before.
func TestRestorePlanEndpointResolvesATransaction(t *testing.T) {
	commit := time.Date(2026, 12, 5, 10, 30, 0, 123456000, time.UTC)
	var asked []walarchive.RestoreRequest
	s := New(Config{Token: "tok", FetchToken: "fetch", Registry: prometheus.NewRegistry(), Backups: &fakeBackups{},
		Status: func() apiclient.Status { return apiclient.Status{} }, Ready: func() error { return nil },
		PlanRestore: func(ctx context.Context, req walarchive.RestoreRequest) (walarchive.RestorePlan, error) {
			asked = append(asked, req)
			return walarchive.RestorePlan{Backup: walarchive.BackupRecord{ID: "20261205T100000Z"}, Timeline: 1, Target: req.Target,
				Stop: walarchive.StopAtLSN, LastXact: commit, LastXactLSN: 0x3000128, TargetTime: commit}, nil
		}})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	if code, msg := do(t, http.MethodPost, srv.URL+"/v1/restore-plan", "tok", `{"target":"xid:2"}`); code != http.StatusBadRequest || !strings.Contains(msg, "0, 1 and 2 are reserved") {
		t.Errorf("xid:2: %d %s; want 400 naming the expected forms", code, msg)
	}
	c := apiclient.New(srv.URL, "tok", nil)
	p, err := c.PlanRestore(context.Background(), apiclient.RestorePlanRequest{Target: "xid:4711@0/3000000"})
	if err != nil || p.Stop != "LSN" || p.CommitLSN != "0/3000128" || !p.CommitTime.Equal(commit) || !p.LastXact.Equal(commit) {
		t.Errorf("plan = %+v, %v; want the commit at 0/3000128, %s", p, err, commit)
	}
	if len(asked) != 1 || asked[0].Target.Xid != 4711 || asked[0].Target.XidFrom != 0x3000000 {
		t.Errorf("planner asked %+v; want transaction 4711 from 0/3000000", asked)
	}
	// Other targets have no commit to name.
	p, err = c.PlanRestore(context.Background(), apiclient.RestorePlanRequest{Target: "latest"})
	if err != nil || p.CommitLSN != "" || !p.CommitTime.IsZero() {
		t.Errorf("latest: %+v, %v; want no commit named", p, err)
	}
}
