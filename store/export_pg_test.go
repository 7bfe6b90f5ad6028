package store

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Pool returns the connection pool, for out-of-band changes and inspection.
func (p *Postgres) Pool() *pgxpool.Pool { return p.pool }

// OpenPostgresWithMigrations opens the database migrating with steps
// instead of the built-in PostgreSQL migrations.
func OpenPostgresWithMigrations(ctx context.Context, cfg PostgresConfig, steps []string) (*Postgres, error) {
	return openPostgres(ctx, cfg, steps)
}

// PostgresMigrations returns a copy of the built-in PostgreSQL steps.
func PostgresMigrations() []string { return append([]string(nil), pgMigrations...) }
