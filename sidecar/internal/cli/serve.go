package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"

	"github.com/kcbackup/kcbackup/sidecar/apiclient"
	"github.com/kcbackup/kcbackup/sidecar/internal/metrics"
	"github.com/kcbackup/kcbackup/sidecar/internal/server"
	"github.com/kcbackup/kcbackup/sidecar/internal/walcache"
	"github.com/kcbackup/kcbackup/walarchive"
	"github.com/kcbackup/kcbackup/walarchive/buildinfo"
	"github.com/kcbackup/kcbackup/walarchive/storage"
)

// serveReadOnlyNote is what every /v1 request but a WAL fetch is answered with.
const serveReadOnlyNote = "this is a read-only kcbackup serve process (WAL for a restored copy's restore_command): " +
	"it only answers GET /v1/wal/{name} with the fetch-only token; backups, prune, status and restore plans " +
	"belong to the archive's writer, the production sidecar (kcbackup run)"

type serveOptions struct {
	storage        string
	listen         string
	fetchTokenFile string
	walPrefetch    int
}

func newServeCmd(g *globalOptions) *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve --storage URL --fetch-token-file FILE",
		Short: "Serve WAL from an archive to a restored copy's restore_command, read-only",
		Long: `serve is the container beside a restored copy of the database (a new instance recovering from
the archive): PostgreSQL's restore_command, as written by
'kcbackup restore --fetch-via http://127.0.0.1:8008 --fetch-token-file FILE', fetches each WAL
file through it. It opens the archive read-only and never writes into it: no writer claim, no
identity, no upload, no deletion; the archive keeps its one writer, the production sidecar
(kcbackup run), which may go on archiving meanwhile.

HTTP on --listen: GET /v1/wal/<file> with 'Authorization: Bearer <fetch-only token>' (the
token read from --fetch-token-file, or KCBACKUP_FETCH_TOKEN), answered as kcbackup run
answers it: the verified file, 404 only when the archive truly lacks it (so recovery ends
there and the copy promotes), 400 for a malformed name, 500 for a corrupt object, 502 for a
storage error; --wal-prefetch segments are prefetched into memory after each one served.
/healthz, /readyz (ready once the archive was opened and its identity read) and /metrics
need no token. Every other /v1 path answers 403: there is no admin token and no admin API.

An encrypted archive needs its identity (--encryption-key-file). The archive is opened and
checked at start; a storage URL, token file or archive that is wrong stops serve with an
error naming it.

Example (the restored copy's pod):
  kcbackup restore --storage s3://backups/keycloak-db --pgdata /var/lib/postgresql/data \
      --to latest --fetch-via http://127.0.0.1:8008 --fetch-token-file /etc/kcbackup/fetch-token
  kcbackup serve --storage s3://backups/keycloak-db --fetch-token-file /etc/kcbackup/fetch-token`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error { return o.run(cmd.Context(), g) },
	}
	f := cmd.Flags()
	f.StringVar(&o.storage, "storage", "", "archive location, read only: "+walarchive.StorageURLForms)
	f.StringVar(&o.listen, "listen", fmt.Sprintf(":%d", apiclient.DefaultPort), "HTTP listen address for GET /v1/wal, the health endpoints and /metrics")
	f.StringVar(&o.fetchTokenFile, "fetch-token-file", "", "file holding the fetch-only bearer token restore_command presents (or set KCBACKUP_FETCH_TOKEN); required")
	f.IntVar(&o.walPrefetch, "wal-prefetch", 4, "segments prefetched into memory after each one served (memory: this many segments)")
	return cmd
}

func (o *serveOptions) run(ctx context.Context, g *globalOptions) error {
	log, err := g.logger()
	if err != nil {
		return err
	}
	cfg, err := o.config(ctx, g)
	if err != nil {
		return err
	}
	if os.Getenv("KCBACKUP_TOKEN") != "" || os.Getenv("KCBACKUP_TOKEN_FILE") != "" {
		log.Info("KCBACKUP_TOKEN/KCBACKUP_TOKEN_FILE is set but ignored: serve has no admin API")
	}
	cfg.Logger = log
	log.Info("kcbackup serve starting: read-only WAL for a restored copy", "storage", walarchive.RedactURL(o.storage),
		"listen", o.listen, "wal_prefetch", o.walPrefetch)
	if err := server.New(cfg).Run(ctx); err != nil {
		return err
	}
	log.Info("kcbackup serve stopped")
	return nil
}

// config checks every input, opens the archive read-only and returns the API's
// configuration; it fails naming the input that is wrong.
func (o *serveOptions) config(ctx context.Context, g *globalOptions) (server.Config, error) {
	// Step 1: validate every input before opening anything.
	if o.storage == "" {
		return server.Config{}, errors.New("--storage (or KCBACKUP_STORAGE) is required: the archive to serve WAL from, " + walarchive.StorageURLForms)
	}
	if o.walPrefetch < 0 || o.walPrefetch > 64 {
		return server.Config{}, fmt.Errorf("invalid --wal-prefetch %d: expected 0 to 64", o.walPrefetch)
	}
	fetchToken, err := readFetchToken(o.fetchTokenFile)
	if err != nil {
		return server.Config{}, err
	}
	if fetchToken == "" {
		return server.Config{}, errors.New("--fetch-token-file (or KCBACKUP_FETCH_TOKEN_FILE, or KCBACKUP_FETCH_TOKEN) is required: " +
			"the fetch-only bearer token the restored copy's restore_command presents")
	}
	key, err := g.key()
	if err != nil {
		return server.Config{}, err
	}
	if key != nil && !key.CanDecrypt() {
		return server.Config{}, errors.New("--encryption-recipient-file alone cannot read an archive: serve needs the archive's identity, --encryption-key-file")
	}

	// Step 2: open the archive through a store that refuses every write, and read its identity.
	st, err := openStorageReadOnly(ctx, o.storage)
	if err != nil {
		return server.Config{}, err
	}
	a, err := walarchive.OpenArchive(ctx, st, key)
	if err != nil {
		return server.Config{}, fmt.Errorf("open the archive at --storage %s: %w", walarchive.RedactURL(o.storage), err)
	}

	// Step 3: the API: WAL through run's cache and prefetch, and only what describes this
	// process on /metrics (run's archiving gauges would read as a sidecar that is down and
	// set off its alerts).
	m := metrics.New()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildinfo.Get().Collector(), m.WALServed)
	wal := walcache.New(walcache.Config{
		Ahead:   o.walPrefetch,
		Open:    func(context.Context) (*walarchive.Archive, error) { return a, nil },
		OnServe: func(src walcache.Source) { m.WALServed.WithLabelValues(string(src)).Inc() },
	})
	cfg := server.Config{
		Addr: o.listen, FetchToken: fetchToken, Registry: reg, WAL: wal, ReadOnly: serveReadOnlyNote,
		// The archive was opened and its identity read before the server listens.
		Ready: func() error { return nil },
	}
	return cfg, cfg.Validate()
}

// openStorageReadOnly opens the storage URL so that nothing can be written through it: a
// file:// directory must exist already (opening would otherwise create it), and every
// write or delete is refused by readOnlyStorage.
func openStorageReadOnly(ctx context.Context, raw string) (storage.Storage, error) {
	loc, err := walarchive.ParseStorageURL(raw, nil)
	if err != nil {
		return nil, fmt.Errorf("--storage: %w", err)
	}
	if loc.Scheme == "file" {
		if fi, err := os.Stat(loc.Path); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--storage %s: no archive directory at %s: expected the directory of an existing archive", walarchive.RedactURL(raw), loc.Path)
		}
	}
	st, err := walarchive.OpenStorage(ctx, raw)
	if err != nil {
		return nil, fmt.Errorf("--storage: %w", err)
	}
	return readOnlyStorage{st}, nil
}

// errReadOnly is what readOnlyStorage answers every write with.
var errReadOnly = errors.New("kcbackup serve never writes into the archive")

// readOnlyStorage passes reads through and refuses every write: whatever code path serve
// runs, it cannot change the archive (an archive has one writer, the production sidecar).
type readOnlyStorage struct{ storage.Storage }

var _ storage.Storage = readOnlyStorage{}

func (s readOnlyStorage) Put(ctx context.Context, key string, r io.Reader) error {
	return fmt.Errorf("put %s: %w", key, errReadOnly)
}

func (s readOnlyStorage) PutIfAbsent(ctx context.Context, key string, r io.Reader) error {
	return fmt.Errorf("put %s: %w", key, errReadOnly)
}

func (s readOnlyStorage) Delete(ctx context.Context, key string) error {
	return fmt.Errorf("delete %s: %w", key, errReadOnly)
}
