package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"

	sqlite3 "modernc.org/sqlite/lib"
)

// UpdateKey durably replaces the mutable metadata of the stored key k.ID
// with k's: Alias, Description, State, DeletionDate, RotationEnabled,
// RotateDays, LastRotatedAt, Tags, Gen and MAC, if the stored generation is
// lower than k.Gen. ID, Usage, Origin, CreatedAt and Versions are not
// changed (k.Versions is ignored). A zero DeletionDate or LastRotatedAt is
// stored as "none".
//
// It returns an error wrapping ErrNotFound if no key has k.ID, ErrStale if
// the stored generation is not lower than k.Gen, and ErrAliasExists if
// k.Alias is non-empty, k.State is not Deleted and another key that is not
// Deleted holds the alias. On any error nothing is changed.
func (s *SQLite) UpdateKey(ctx context.Context, k Key) error {
	return s.UpdateKeys(ctx, k)
}

// UpdateKeys is UpdateKey for each of ks, in order, in one transaction:
// every key is changed or none is. The alias check of each key sees the
// keys before it, so an alias can move from one key to another (the first
// key gives it up, the second takes it) with no moment at which it is free.
func (s *SQLite) UpdateKeys(ctx context.Context, ks ...Key) error {
	for _, k := range ks {
		if err := checkKeyUpdate(k); err != nil {
			return fmt.Errorf("store: update key %s: %w", k.ID, err)
		}
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: update keys: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, k := range ks {
		if err := updateKeySQLite(ctx, tx, k); err != nil {
			return fmt.Errorf("store: update key %s: %w", k.ID, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: update keys: %w", err)
	}
	return nil
}

// checkKeyUpdate refuses a key UpdateKey cannot store.
func checkKeyUpdate(k Key) error {
	if k.ID == "" {
		return errors.New("invalid key: empty id")
	}
	if k.Gen > math.MaxInt64 {
		return errors.New("invalid key: generation above 2^63-1")
	}
	if !k.DeletionDate.IsZero() {
		if _, err := toNanos(k.DeletionDate); err != nil {
			return fmt.Errorf("invalid key: deletion date: %w", err)
		}
	}
	if !k.LastRotatedAt.IsZero() {
		if _, err := toNanos(k.LastRotatedAt); err != nil {
			return fmt.Errorf("invalid key: last rotated at: %w", err)
		}
	}
	return nil
}

// updateKeySQLite is UpdateKey's change of one key within tx.
func updateKeySQLite(ctx context.Context, tx *sql.Tx, k Key) error {
	if k.Alias != "" && k.State != stateDeleted {
		var holder string
		err := tx.QueryRowContext(ctx,
			`SELECT id FROM keys WHERE alias = ? AND state <> 'Deleted' AND id <> ? LIMIT 1`,
			k.Alias, k.ID).Scan(&holder)
		switch {
		case err == nil:
			return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
	}
	res, err := tx.ExecContext(ctx,
		`UPDATE keys SET alias = ?, description = ?, state = ?, deletion_date = ?,
		        rotation_enabled = ?, rotate_days = ?, last_rotated_at = ?, gen = ?, mac = ?
		 WHERE id = ? AND gen < ?`,
		k.Alias, k.Description, k.State, nullTime(k.DeletionDate),
		boolInt(k.RotationEnabled), int64(k.RotateDays), nullTime(k.LastRotatedAt), int64(k.Gen), k.MAC, k.ID, int64(k.Gen))
	if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE) {
		return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
	}
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return missingOrStale(ctx, tx, k.ID)
	}
	if err := setMaterialSQLite(ctx, tx, k); err != nil {
		return err
	}
	return sqliteReplaceTags(ctx, tx, k.ID, k.Tags)
}

// missingOrStale tells why a conditional update of key id changed no row.
func missingOrStale(ctx context.Context, tx *sql.Tx, id string) error {
	var one int
	switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM keys WHERE id = ?`, id).Scan(&one); {
	case errors.Is(err, sql.ErrNoRows):
		return ErrNotFound
	case err != nil:
		return err
	}
	return ErrStale
}

// AddVersion durably adds version v to the stored key k.ID, deletes the
// pending object whose ObjectID is v.ObjectID, and records v.CreatedAt as
// the key's LastRotatedAt and k.Gen and k.MAC as its generation and MAC,
// in one transaction: on any error nothing is changed. The other fields of
// k are not written.
//
// v.Number must be one more than the key's highest version; v needs a
// non-empty ObjectID not used by any stored version and a storable
// CreatedAt. It returns an error wrapping ErrNotFound if no key has k.ID
// and ErrStale if its stored generation is not lower than k.Gen.
func (s *SQLite) AddVersion(ctx context.Context, k Key, v Version) (err error) {
	keyID := k.ID
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: add version %d to key %s: %w", v.Number, keyID, err)
		}
	}()
	if err := validateVersion(v); err != nil {
		return fmt.Errorf("invalid version: %w", err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	var top sql.NullInt64
	if err := tx.QueryRowContext(ctx,
		`SELECT (SELECT max(version) FROM key_versions WHERE key_id = ?) FROM keys WHERE id = ?`,
		keyID, keyID).Scan(&top); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return ErrNotFound
		}
		return err
	}
	if int64(v.Number) != top.Int64+1 {
		return fmt.Errorf("version %d does not follow the highest version %d", v.Number, top.Int64)
	}
	created, _ := toNanos(v.CreatedAt)
	_, err = tx.ExecContext(ctx,
		`INSERT INTO key_versions (key_id, version, object_id, created_at, usage_reserved, mac) VALUES (?, ?, ?, ?, ?, ?)`,
		keyID, int64(v.Number), v.ObjectID, created, int64(v.UsageReserved), v.MAC)
	if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE) {
		return fmt.Errorf("object id %x already used by a stored key version", v.ObjectID)
	}
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM pending_objects WHERE object_id = ?`, v.ObjectID); err != nil {
		return err
	}
	if k.Gen > math.MaxInt64 {
		return errors.New("generation above 2^63-1")
	}
	res, err := tx.ExecContext(ctx, `UPDATE keys SET last_rotated_at = ?, gen = ?, mac = ? WHERE id = ? AND gen < ?`,
		created, int64(k.Gen), k.MAC, keyID, int64(k.Gen))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return missingOrStale(ctx, tx, keyID)
	}
	return tx.Commit()
}

// ReserveUsage durably raises the usage reservation of version of key
// keyID to upTo; a lower or equal upTo leaves it unchanged (reservations
// never go backwards). upTo is at most 2^63-1. It returns an error wrapping
// ErrNotFound if the key has no such version.
func (s *SQLite) ReserveUsage(ctx context.Context, keyID string, version uint32, upTo uint64) error {
	if upTo > math.MaxInt64 {
		return fmt.Errorf("store: reserve usage of key %s version %d: %d above 2^63-1", keyID, version, upTo)
	}
	res, err := s.w.ExecContext(ctx,
		`UPDATE key_versions SET usage_reserved = max(usage_reserved, ?) WHERE key_id = ? AND version = ?`,
		int64(upTo), keyID, int64(version))
	if err != nil {
		return fmt.Errorf("store: reserve usage of key %s version %d: %w", keyID, version, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("store: reserve usage of key %s version %d: %w", keyID, version, err)
	} else if n == 0 {
		return fmt.Errorf("store: reserve usage of key %s version %d: %w", keyID, version, ErrNotFound)
	}
	return nil
}
