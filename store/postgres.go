package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ErrUnavailable means the database could not be reached (connection
// refused or lost, server shutting down). The operation may or may not have
// taken effect if the connection was lost during a commit; callers that
// must know re-read. Only the PostgreSQL store returns it.
var ErrUnavailable = errors.New("store: database unavailable")

// PostgresConfig tunes OpenPostgres. The zero value of every field but DSN
// is usable.
type PostgresConfig struct {
	// DSN is a libpq connection string or URL
	// (postgres://user@host:5432/db?sslmode=verify-full). Required.
	DSN string
	// MaxConns bounds the connection pool (default 10). Watch and the
	// maintenance lock hold one connection each, on top.
	MaxConns int32
}

// Postgres is the metadata store on a PostgreSQL database that several kmsd
// nodes share. It implements the same contract as *SQLite (the conformance
// suite runs on both) and adds what a cluster needs: change notifications
// (Watch), cross-node key locks (LockKey), usage blocks claimed atomically
// (ClaimUsage), the cluster-wide maintenance lock (TryMaintenanceLock) and
// shared legacy nonces (UseNonce) and TC3 signatures (PublishSignatures).
//
// Every method that writes has committed its change when it returns nil
// (durability is the server's: keep synchronous_commit on). Errors that come
// from an unreachable database wrap ErrUnavailable.
//
// A *Postgres is safe for concurrent use by multiple goroutines and by
// multiple processes on the same database.
type Postgres struct {
	pool *pgxpool.Pool

	leaderMu sync.Mutex
	leader   *pgxpool.Conn // holds the maintenance lock while not nil
}

// OpenPostgres connects to the database and migrates its schema to the
// version this code writes. Migrations run in one transaction under an
// advisory lock, so nodes starting at once migrate exactly once and none
// sees a half-migrated schema. It returns an error wrapping
// ErrSchemaTooNew, changing nothing, if the schema was written by a newer
// release, and refuses a database whose schema holds tables but no hsmkms
// schema version. ctx bounds connecting and migrating.
//
// The caller must Close the returned store.
func OpenPostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	return openPostgres(ctx, cfg, pgMigrations)
}

func openPostgres(ctx context.Context, cfg PostgresConfig, steps []string) (*Postgres, error) {
	if cfg.DSN == "" {
		return nil, errors.New("store: open postgres: empty DSN")
	}
	pc, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// The parse error may quote the DSN, password included: do not wrap it.
		return nil, errors.New("store: open postgres: malformed DSN")
	}
	pc.MaxConns = cfg.MaxConns
	if pc.MaxConns <= 0 {
		pc.MaxConns = 10
	}
	pc.ConnConfig.ConnectTimeout = 5 * time.Second
	pc.HealthCheckPeriod = 5 * time.Second
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	pc.ConnConfig.RuntimeParams["application_name"] = "hsmkms"
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("store: open postgres: %w", classify(err))
	}
	p := &Postgres{pool: pool}
	if err := p.migrate(ctx, steps); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: open postgres: %w", classify(err))
	}
	return p, nil
}

// Close releases the maintenance lock, if held, and closes every
// connection. The caller must ensure no method is running or called
// afterwards.
func (p *Postgres) Close() error {
	p.leaderMu.Lock()
	if p.leader != nil {
		_ = p.leader.Conn().Close(context.Background()) // closing the session releases the lock
		p.leader.Release()
		p.leader = nil
	}
	p.leaderMu.Unlock()
	p.pool.Close()
	return nil
}

// Ping reports whether the database answers a query; ctx bounds the wait.
func (p *Postgres) Ping(ctx context.Context) error {
	var one int
	if err := p.pool.QueryRow(ctx, `SELECT 1`).Scan(&one); err != nil {
		return fmt.Errorf("store: ping: %w", classify(err))
	}
	return nil
}

// classify wraps errors that mean "the database cannot be reached" with
// ErrUnavailable; other errors are returned as they are.
func classify(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// A deadline hit while connecting is an outage as far as the
		// caller can tell; keep the context error visible too.
		var ce *pgconn.ConnectError
		if errors.As(err, &ce) {
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case strings.HasPrefix(pe.Code, "08"), // connection exception
			pe.Code == "57P01", pe.Code == "57P02", pe.Code == "57P03", // shutdown, cannot connect now
			pe.Code == "53300": // too many connections
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return err
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		pgconn.SafeToRetry(err) || strings.Contains(err.Error(), "conn closed") {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return err
}

func pgConstraint(err error) (code, constraint string) {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code, pe.ConstraintName
	}
	return "", ""
}

// write runs f in a transaction and classifies its error.
func (p *Postgres) write(ctx context.Context, f func(tx pgx.Tx) error) error {
	return classify(pgx.BeginFunc(ctx, p.pool, f))
}

// nullNanos is the stored form of an optional time: NULL for the zero time.
func nullNanos(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	n, _ := toNanos(t)
	return &n
}
