package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// RejoinAsStandby makes the stopped server p a streaming standby of primary and starts it,
// as a failover manager does with an old primary after a switchover: standby.signal, and
// primary_conninfo naming the new primary, appended to postgresql.conf. p must not have
// diverged from primary (it was stopped cleanly before primary was promoted, so the new
// timeline branched after p's last WAL): pg_rewind is not run. With the default
// recovery_target_timeline 'latest' the server follows primary's new timeline.
func (p *Postgres) RejoinAsStandby(ctx context.Context, primary *Postgres) error {
	p.mu.Lock()
	running := p.proc != nil
	p.mu.Unlock()
	if running {
		return fmt.Errorf("rejoin postgres on port %d as a standby: stop it first", p.port)
	}
	conninfo := "host=127.0.0.1 port=" + strconv.Itoa(primary.Port()) + " user=" + PGSuperuser
	if err := p.appendConf(map[string]string{"primary_conninfo": conninfo}); err != nil {
		return fmt.Errorf("rejoin postgres on port %d as a standby: %w", p.port, err)
	}
	signal := filepath.Join(p.dataDir, "standby.signal")
	if err := os.WriteFile(signal, nil, 0o600); err != nil {
		return fmt.Errorf("rejoin postgres on port %d as a standby: %w", p.port, err)
	}
	if err := p.ChownToServer(signal); err != nil {
		return fmt.Errorf("rejoin postgres on port %d as a standby: %w", p.port, err)
	}
	return p.Start(ctx)
}
