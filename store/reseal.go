package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Reseals: an administrator's replacement of the MAC of an immutable row
// (key versions, intents). Keys and credentials are resealed through
// UpdateKey and UpdateCredential, which raise their generation.

// SetVersionMAC replaces the MAC of version number of key keyID (an
// administrator's reseal); ErrNotFound if there is no such version.
func (s *SQLite) SetVersionMAC(ctx context.Context, keyID string, number uint32, mac []byte) error {
	res, err := s.w.ExecContext(ctx, `UPDATE key_versions SET mac = ? WHERE key_id = ? AND version = ?`, mac, keyID, int64(number))
	return affectedOne(res, err, fmt.Sprintf("store: set MAC of key %s version %d", keyID, number))
}

// SetPendingMAC replaces the MAC of the pending object objectID (an
// administrator's reseal); ErrNotFound if there is none.
func (s *SQLite) SetPendingMAC(ctx context.Context, objectID, mac []byte) error {
	res, err := s.w.ExecContext(ctx, `UPDATE pending_objects SET mac = ? WHERE object_id = ?`, mac, objectID)
	return affectedOne(res, err, fmt.Sprintf("store: set MAC of pending object %x", objectID))
}

func affectedOne(res sql.Result, err error, what string) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	} else if n == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// pgMissingOrStale tells why a conditional update of key id changed no row.
func pgMissingOrStale(ctx context.Context, tx pgx.Tx, id string) error {
	var one int
	switch err := tx.QueryRow(ctx, `SELECT 1 FROM keys WHERE id = $1`, id).Scan(&one); {
	case errors.Is(err, pgx.ErrNoRows):
		return ErrNotFound
	case err != nil:
		return err
	}
	return ErrStale
}

// SetVersionMAC replaces the MAC of a key version (see
// (*SQLite).SetVersionMAC). Other nodes are notified.
func (p *Postgres) SetVersionMAC(ctx context.Context, keyID string, number uint32, mac []byte) error {
	err := p.write(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE key_versions SET mac = $1 WHERE key_id = $2 AND version = $3`, mac, keyID, int64(number))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return notify(ctx, tx, "k:"+keyID)
	})
	if err != nil {
		return fmt.Errorf("store: set MAC of key %s version %d: %w", keyID, number, err)
	}
	return nil
}

// SetPendingMAC replaces the MAC of a pending object (see
// (*SQLite).SetPendingMAC).
func (p *Postgres) SetPendingMAC(ctx context.Context, objectID, mac []byte) error {
	tag, err := p.pool.Exec(ctx, `UPDATE pending_objects SET mac = $1 WHERE object_id = $2`, mac, objectID)
	if err != nil {
		return fmt.Errorf("store: set MAC of pending object %x: %w", objectID, classify(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("store: set MAC of pending object %x: %w", objectID, ErrNotFound)
	}
	return nil
}
