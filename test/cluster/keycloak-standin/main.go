// Command keycloak-standin plays Keycloak in the single-node cluster test: a Deployment that
// keeps a connection to the database and reports ready only while a query succeeds.
//
//	KEYCLOAK_DB_URL=postgres://user:pass@host:5432/db keycloak-standin [--listen :8080]
//
// GET /ready answers 200 when `SELECT 1` succeeded within the last check, 503 otherwise.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

func main() {
	listen := flag.String("listen", ":8080", "address of the readiness endpoint")
	flag.Parse()
	url := os.Getenv("KEYCLOAK_DB_URL")
	if url == "" {
		log.Fatal("KEYCLOAK_DB_URL is required: the database URL (postgres://user:pass@host:port/db)")
	}
	var ready atomic.Bool
	go func() {
		var conn *pgx.Conn
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			if conn == nil {
				c, err := pgx.Connect(ctx, url)
				if err != nil {
					log.Printf("connect: %v", err)
				}
				conn = c
			}
			ok := false
			if conn != nil {
				var one int
				if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
					log.Printf("query: %v", err)
					_ = conn.Close(ctx)
					conn = nil
				} else {
					ok = one == 1
				}
			}
			cancel()
			ready.Store(ok)
			time.Sleep(time.Second)
		}
	}()
	http.HandleFunc("/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "database not reachable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	log.Fatal(http.ListenAndServe(*listen, nil))
}
