package apiclient_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
)

const token = "s3cr3t-token-value"

// fakeSidecar answers the API with canned bodies and checks the bearer token.
func fakeSidecar(t *testing.T, routes map[string]func(w http.ResponseWriter, r *http.Request)) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			w.WriteHeader(http.StatusUnauthorized)
			_ = json.NewEncoder(w).Encode(apiclient.ErrorBody{Error: "missing or wrong bearer token"})
			return
		}
		h, ok := routes[r.Method+" "+r.URL.Path]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			_ = json.NewEncoder(w).Encode(apiclient.ErrorBody{Error: "no such route"})
			return
		}
		h(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func reply(code int, v any) func(w http.ResponseWriter, r *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(v)
	}
}

func TestStatusDecodesCamelCaseFields(t *testing.T) {
	srv := fakeSidecar(t, map[string]func(http.ResponseWriter, *http.Request){
		"GET /v1/status": func(w http.ResponseWriter, _ *http.Request) {
			_, _ = w.Write([]byte(`{"systemIdentifier":"7312","timeline":3,"serverFlushLSN":"0/3000060","archivedLSN":"0/3000000","archiveLagBytes":96,"archiveLagSeconds":1.5,"storageUp":true,"streaming":true}`))
		},
	})
	got, err := apiclient.New(srv.URL, token, nil).Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := apiclient.Status{SystemIdentifier: "7312", Timeline: 3, ServerFlushLSN: "0/3000060", ArchivedLSN: "0/3000000",
		ArchiveLagBytes: 96, ArchiveLagSeconds: 1.5, StorageUp: true, Streaming: true}
	if got != want {
		t.Fatalf("Status = %+v, want %+v", got, want)
	}
}

func TestStartBackupReportsRunningBackupOn409(t *testing.T) {
	srv := fakeSidecar(t, map[string]func(http.ResponseWriter, *http.Request){
		"POST /v1/backups": reply(http.StatusConflict, apiclient.ErrorBody{Error: "a backup is already running", ID: "20260101T000000Z"}),
	})
	_, err := apiclient.New(srv.URL, token, nil).StartBackup(context.Background())
	if !errors.Is(err, apiclient.ErrBackupRunning) {
		t.Fatalf("err = %v, want ErrBackupRunning", err)
	}
	var re *apiclient.RunningError
	if !errors.As(err, &re) || re.ID != "20260101T000000Z" {
		t.Fatalf("err = %v, want a RunningError with the running ID", err)
	}
}

func TestStartBackupAndPollUntilCompleted(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	srv := fakeSidecar(t, map[string]func(http.ResponseWriter, *http.Request){
		"POST /v1/backups": reply(http.StatusAccepted, apiclient.BackupJob{ID: "b1", State: apiclient.StateRunning, StartedAt: start}),
		"GET /v1/backups/b1": reply(http.StatusOK, apiclient.BackupJob{ID: "b1", State: apiclient.StateCompleted, StartedAt: start,
			Backup: &apiclient.BackupInfo{ID: "b1", StartTime: start, StopTime: start.Add(time.Minute), StartLSN: "0/2000028", StopLSN: "0/2000100", Timeline: 1, SizeBytes: 10, DataBytes: 100}}),
	})
	c := apiclient.New(srv.URL+"/", token, nil)
	j, err := c.StartBackup(context.Background())
	if err != nil || j.ID != "b1" || j.Done() {
		t.Fatalf("StartBackup = %+v, %v; want running job b1", j, err)
	}
	j, err = c.Backup(context.Background(), "b1")
	if err != nil || !j.Done() || j.Backup == nil || j.Backup.StopLSN != "0/2000100" {
		t.Fatalf("Backup = %+v, %v; want completed job with its backup", j, err)
	}
}

func TestUnknownBackupIsNotFound(t *testing.T) {
	srv := fakeSidecar(t, nil)
	_, err := apiclient.New(srv.URL, token, nil).Backup(context.Background(), "nope")
	if !errors.Is(err, apiclient.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestCatalogAndPrune(t *testing.T) {
	e := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	srv := fakeSidecar(t, map[string]func(http.ResponseWriter, *http.Request){
		"GET /v1/backups": reply(http.StatusOK, apiclient.Catalog{Backups: []apiclient.BackupInfo{{ID: "b1"}},
			Window: &apiclient.RecoveryWindow{Earliest: e, Latest: e.Add(time.Hour)}, Timelines: []uint32{1, 2}}),
		"POST /v1/prune": func(w http.ResponseWriter, r *http.Request) {
			var req apiclient.PruneRequest
			if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.KeepBackups != 3 || req.KeepWithin != "168h" {
				reply(http.StatusBadRequest, apiclient.ErrorBody{Error: "bad prune request"})(w, r)
				return
			}
			reply(http.StatusOK, apiclient.PruneResult{RemovedBackups: []string{"b0"}, RemovedWALObjects: 7})(w, r)
		},
	})
	c := apiclient.New(srv.URL, token, nil)
	cat, err := c.Catalog(context.Background())
	if err != nil || cat.Window == nil || !cat.Window.Contains(e.Add(time.Minute)) || cat.Window.Contains(e.Add(2*time.Hour)) {
		t.Fatalf("Catalog = %+v, %v", cat, err)
	}
	res, err := c.Prune(context.Background(), apiclient.PruneRequest{KeepBackups: 3, KeepWithin: "168h"})
	if err != nil || res.RemovedWALObjects != 7 || len(res.RemovedBackups) != 1 {
		t.Fatalf("Prune = %+v, %v", res, err)
	}
}

func TestErrorsNameURLAndStatusButNeverTheToken(t *testing.T) {
	srv := fakeSidecar(t, map[string]func(http.ResponseWriter, *http.Request){
		"GET /v1/status": reply(http.StatusInternalServerError, apiclient.ErrorBody{Error: "storage down"}),
	})
	for name, c := range map[string]*apiclient.Client{
		"server error": apiclient.New(srv.URL, token, nil),
		"wrong token":  apiclient.New(srv.URL, "wrong-"+token, nil),
		"unreachable":  apiclient.New("http://127.0.0.1:1", token, nil),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.Status(context.Background())
			if err == nil {
				t.Fatal("Status succeeded, want an error")
			}
			msg := err.Error()
			if !strings.Contains(msg, "/v1/status") {
				t.Errorf("error %q does not name the URL", msg)
			}
			if strings.Contains(msg, token) {
				t.Errorf("error %q contains the token", msg)
			}
		})
	}
	_, err := apiclient.New(srv.URL, "wrong", nil).Status(context.Background())
	if !errors.Is(err, apiclient.ErrUnauthorized) || !strings.Contains(err.Error(), "401") {
		t.Fatalf("err = %v, want ErrUnauthorized naming status 401", err)
	}
}
