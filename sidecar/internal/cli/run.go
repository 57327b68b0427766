package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/backup"
	"github.com/kcbackup/kcbackup/sidecar/internal/keycloak"
	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/sidecar/internal/pgrepl"
	"github.com/kcbackup/kcbackup/sidecar/internal/server"
	"github.com/kcbackup/kcbackup/sidecar/internal/standby"
	"github.com/kcbackup/kcbackup/sidecar/internal/streamer"
	"github.com/kcbackup/kcbackup/sidecar/internal/walcache"
	"github.com/kcbackup/kcbackup/walarchive"
)

type runOptions struct {
	storage         string
	listen          string
	slot            string
	partialInterval time.Duration
	spool           string
	spoolMaxMB      int64
	pgURL           string
	tokenFile       string
	fetchTokenFile  string
	pgdata          string
	compression     string
	walPrefetch     int
	writerTTL       time.Duration
	standbySlotIvl  time.Duration
}

func newRunCmd(g *globalOptions) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run --storage URL",
		Short: "Archive WAL continuously and serve the HTTP API (the sidecar daemon)",
		Long: `run streams WAL from PostgreSQL through a physical replication slot (created with reserved
WAL when missing) and archives it: complete segments as they fill, and the tail of the
current segment as appended parts, each holding only the bytes that arrived since the one
before, at most every --partial-interval (several in flight at once). The position acknowledged to PostgreSQL never
passes what is durable in the archive, so the slot keeps on the server whatever is not
archived yet. SIGTERM stops receiving, uploads the rest and exits 0.

HTTP API on --listen: /metrics, /healthz, /readyz without authentication; /v1/status,
/v1/backups, /v1/prune, /v1/restore-plan (a dry run of the restore planner, answered 422
when it refuses), /v1/keycloak/cleanup and /v1/wal/<file> (restore_command through the sidecar, with
--wal-prefetch segments prefetched into memory) with 'Authorization: Bearer <token>', the
admin token read from --token-file or the KCBACKUP_TOKEN environment variable (with neither,
/v1 is disabled). The fetch-only token, from --fetch-token-file or KCBACKUP_FETCH_TOKEN,
opens GET /v1/wal/<file> and nothing else: it is the one PostgreSQL's restore_command
holds, so the database's container cannot prune or back up. It must differ from the admin
token.

An archive has one writer at a time. The sidecar claims the archive before it uploads
anything, renews the claim every --writer-ttl/6 and releases it when it stops; another
sidecar's live claim, or a server that is not the continuation of what the archive holds
(a copy restored to an earlier point, a replaced primary), is refused with a message that
says who holds the archive and what to do, and retried. A sidecar whose claim was
superseded (an in-place restore hands the archive over) stops writing at once.

With replicas, every pod's sidecar points at the same archive and asks its own server
pg_is_in_recovery() every second. Only the primary's sidecar archives and takes backups.
A standby's sidecar stands by: it writes nothing into the archive, answers 421 to backups,
prune and the Keycloak clean-up, reports role "standby" (kcbackup_server_role), and keeps a
physical slot named --slot on the standby, advanced to where the archive ends, so that
after a promotion it claims the archive (once the old primary's claim is released or
lapsed) and archives on from the archive's end, on the new timeline, without a hole. A
primary that stops answering for --writer-ttl has its archiving stopped and its claim
released, so a promoted standby need not wait for it (docs/replicas.md).

For synchronous archiving (no committed transaction missing from the archive), set
--partial-interval 0 and add kcbackup to synchronous_standby_names.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd.Context(), g) },
	}
	f := cmd.Flags()
	f.StringVar(&o.storage, "storage", "", "archive location: "+walarchive.StorageURLForms)
	f.StringVar(&o.listen, "listen", fmt.Sprintf(":%d", apiclient.DefaultPort), "HTTP listen address for the API and /metrics")
	f.StringVar(&o.slot, "slot", "kcbackup", "physical replication slot name")
	f.DurationVar(&o.partialInterval, "partial-interval", 200*time.Millisecond, "upload the current segment's tail at most this often (0: as soon as WAL arrives); each upload is one PUT of the bytes since the last, so this bounds the PUT rate while WAL flows")
	f.StringVar(&o.spool, "spool", filepath.Join(os.TempDir(), "kcbackup-spool"), "local directory for WAL waiting for upload (emptied at start)")
	f.Int64Var(&o.spoolMaxMB, "spool-max-mb", 1024, "pause receiving when the spool holds this many MiB (the slot keeps the WAL)")
	f.StringVar(&o.pgURL, "pg-url", "", "PostgreSQL connection URL (default: the libpq PG* environment variables); prefer PGPASSWORD or a password file to a password in the URL")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding the admin API bearer token, which opens every /v1 endpoint (or set KCBACKUP_TOKEN)")
	f.StringVar(&o.fetchTokenFile, "fetch-token-file", "", "file holding the fetch-only bearer token, which opens only GET /v1/wal (or set KCBACKUP_FETCH_TOKEN; optional)")
	f.StringVar(&o.pgdata, "pgdata", "", "PostgreSQL data directory, to report its volume's free space (optional)")
	f.StringVar(&o.compression, "compression", "zstd", "compression for a new archive: zstd or none")
	f.IntVar(&o.walPrefetch, "wal-prefetch", 4, "segments GET /v1/wal prefetches into memory after each one served (restore through the sidecar; memory: this many segments)")
	f.DurationVar(&o.writerTTL, "writer-ttl", walarchive.DefaultWriterTTL, "how long this sidecar's claim as the archive's one writer holds after each renewal (renewed every sixth of it); a crashed writer's claim lapses after it")
	f.DurationVar(&o.standbySlotIvl, "standby-slot-interval", 30*time.Second, "on a streaming standby, how often the standby's slot is advanced to where the archive ends (each time lists the archive's newest timeline); the standby keeps at most this much more WAL")
	return cmd
}

func (o *runOptions) run(ctx context.Context, g *globalOptions) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	// Step 1: validate every input before touching anything.
	if o.storage == "" {
		return errors.New("--storage (or KCBACKUP_STORAGE) is required: " + walarchive.StorageURLForms)
	}
	if o.standbySlotIvl < 100*time.Millisecond || o.standbySlotIvl > time.Hour {
		return fmt.Errorf("invalid --standby-slot-interval %s: expected 100ms to 1h", o.standbySlotIvl)
	}
	if o.walPrefetch < 0 || o.walPrefetch > 64 {
		return fmt.Errorf("invalid --wal-prefetch %d: expected 0 to 64", o.walPrefetch)
	}
	comp, err := walarchive.ParseCompression(o.compression)
	if err != nil {
		return fmt.Errorf("--compression: %w", err)
	}
	token, err := readToken(o.tokenFile)
	if err != nil {
		return err
	}
	fetchToken, err := readFetchToken(o.fetchTokenFile)
	if err != nil {
		return err
	}
	if err := (server.Config{Token: token, FetchToken: fetchToken}).Validate(); err != nil {
		return err
	}
	if o.pgdata != "" {
		if st, err := os.Stat(o.pgdata); err != nil || !st.IsDir() {
			return fmt.Errorf("invalid --pgdata %q: expected an existing directory", o.pgdata)
		}
	}
	pgcfg, err := pgrepl.ParseConfig(o.pgURL)
	if err != nil {
		return err
	}
	key, err := g.key()
	if err != nil {
		return err
	}
	st, err := walarchive.OpenStorage(ctx, o.storage)
	if err != nil {
		return err
	}
	m := metrics.New()

	// Step 2: build the supervisor (which runs a streamer only while the server is the
	// primary, docs/replicas.md), the backup service and the API.
	sup, err := standby.New(standby.Config{
		PG: pgcfg, Slot: o.slot, Storage: st, Key: key, WriterTTL: o.writerTTL, Metrics: m, Logger: log,
		SlotInterval: o.standbySlotIvl,
		NewStreamer: func() (*streamer.Streamer, error) {
			return streamer.New(streamer.Config{
				PG: pgcfg, Slot: o.slot, PartialInterval: o.partialInterval, SpoolDir: o.spool,
				SpoolMaxBytes: o.spoolMaxMB << 20, Storage: st, Compression: comp, Key: key, PGDataDir: o.pgdata,
				Logger: log, Metrics: m, WriterTTL: o.writerTTL, StorageName: walarchive.RedactURL(o.storage),
			})
		},
	})
	if err != nil {
		return err
	}
	// The streamer's configuration is checked now, not at the first promotion.
	if _, err := sup.Config().NewStreamer(); err != nil {
		return err
	}
	bk := backup.NewService(backup.ServiceConfig{PG: pgcfg, Storage: st, Key: key, Streamer: sup, Logger: log, Metrics: m})
	wal := walcache.New(walcache.Config{
		Ahead: o.walPrefetch,
		Open: func(ctx context.Context) (*walarchive.Archive, error) {
			if a := sup.Archive(); a != nil {
				return a, nil
			}
			return walarchive.OpenArchive(ctx, st, key)
		},
		OnServe: func(src walcache.Source) { m.WALServed.WithLabelValues(string(src)).Inc() },
	})
	srv := server.New(server.Config{
		Addr: o.listen, Token: token, FetchToken: fetchToken, Registry: m.Registry, Logger: log, Backups: bk, WAL: wal,
		KeycloakCleanup: func(ctx context.Context, req apiclient.KeycloakCleanupRequest) (apiclient.KeycloakCleanupResult, error) {
			return keycloak.Serve(ctx, pgcfg, req)
		},
		PlanRestore: func(ctx context.Context, req walarchive.RestoreRequest) (walarchive.RestorePlan, error) {
			a := sup.Archive()
			if a == nil {
				var err error
				if a, err = walarchive.OpenArchive(ctx, st, key); err != nil {
					return walarchive.RestorePlan{}, err
				}
			}
			return a.PlanRestore(ctx, req, time.Now())
		},
		Status: sup.Status, Ready: sup.Ready, Standby: sup.Standby,
	})

	// Step 3: run until SIGTERM; the streamer drains before returning.
	log.Info("kcbackup sidecar starting", "storage", o.storage, "slot", o.slot, "listen", o.listen, "partial_interval", o.partialInterval)
	grp, gctx := errgroup.WithContext(ctx)
	grp.Go(func() error { return sup.Run(gctx) })
	grp.Go(func() error { return srv.Run(gctx) })
	grp.Go(func() error { bk.RefreshGauges(gctx, 5*time.Minute); return nil })
	err = grp.Wait()
	if err != nil {
		return err
	}
	log.Info("kcbackup sidecar stopped")
	return nil
}

// readFetchToken reads the fetch-only token from a file or KCBACKUP_FETCH_TOKEN.
func readFetchToken(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read --fetch-token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("--fetch-token-file %s is empty: expected the fetch-only bearer token", file)
		}
		return tok, nil
	}
	return strings.TrimSpace(os.Getenv("KCBACKUP_FETCH_TOKEN")), nil
}

// readToken reads the API token from a file or KCBACKUP_TOKEN.
func readToken(file string) (string, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read --token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("--token-file %s is empty: expected the API bearer token", file)
		}
		return tok, nil
	}
	return strings.TrimSpace(os.Getenv("KCBACKUP_TOKEN")), nil
}
