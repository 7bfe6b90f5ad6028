package store

import (
	"context"
	"database/sql"
	"slices"
)

// Test-only access to internals, for package store_test (which cannot be
// package store because it imports kms, which imports store).

// OpenWithMigrations opens path migrating with steps instead of the
// built-in migrations.
func OpenWithMigrations(ctx context.Context, path string, steps []string) (*SQLite, error) {
	return openWithMigrations(ctx, path, steps)
}

// Migrations returns a copy of the built-in migration steps.
func Migrations() []string { return slices.Clone(migrations) }

// WriterDB returns the writer pool, for out-of-band changes and inspection.
func (s *SQLite) WriterDB() *sql.DB { return s.w }

// ReaderDB returns the reader pool.
func (s *SQLite) ReaderDB() *sql.DB { return s.r }
