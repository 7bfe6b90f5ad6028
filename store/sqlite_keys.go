package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	sqlite3 "modernc.org/sqlite/lib"
)

// AddPendingObject durably records p before it returns nil. It returns an
// error if p is invalid (empty ObjectID or KeyID, Version 0, zero or
// unstorable CreatedAt) or if a pending object with the same ObjectID
// already exists.
func (s *SQLite) AddPendingObject(ctx context.Context, p PendingObject) error {
	if err := validatePending(p); err != nil {
		return fmt.Errorf("store: add pending object %x: %w", p.ObjectID, err)
	}
	created, _ := toNanos(p.CreatedAt)
	_, err := s.w.ExecContext(ctx,
		`INSERT INTO pending_objects (object_id, key_id, version, created_at, mac) VALUES (?, ?, ?, ?, ?)`,
		p.ObjectID, p.KeyID, int64(p.Version), created, p.MAC)
	if err != nil {
		if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
			return fmt.Errorf("store: add pending object %x: object id already pending", p.ObjectID)
		}
		return fmt.Errorf("store: add pending object %x: %w", p.ObjectID, err)
	}
	return nil
}

// PendingObjects returns every pending object, oldest first (ties by object
// ID). It returns an empty slice, not an error, if there are none.
func (s *SQLite) PendingObjects(ctx context.Context) ([]PendingObject, error) {
	rows, err := s.r.QueryContext(ctx,
		`SELECT object_id, key_id, version, created_at, mac FROM pending_objects ORDER BY created_at, object_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list pending objects: %w", err)
	}
	defer rows.Close()
	out := []PendingObject{}
	for rows.Next() {
		var (
			p       PendingObject
			version int64
			created int64
		)
		if err := rows.Scan(&p.ObjectID, &p.KeyID, &version, &created, &p.MAC); err != nil {
			return nil, fmt.Errorf("store: list pending objects: %w", err)
		}
		p.Version = uint32(version) // CHECK constraint keeps it in range
		p.CreatedAt = fromNanos(created)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list pending objects: %w", err)
	}
	return out, nil
}

// DeletePendingObject durably removes the pending object with objectID. It
// is idempotent: deleting an absent object returns nil.
func (s *SQLite) DeletePendingObject(ctx context.Context, objectID []byte) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM pending_objects WHERE object_id = ?`, objectID); err != nil {
		return fmt.Errorf("store: delete pending object %x: %w", objectID, err)
	}
	return nil
}

// CreateKey durably stores k, all its versions and its tags and deletes the pending
// objects whose ObjectID is one of those versions', in one transaction: on
// any error nothing is changed.
//
// k must have a non-empty ID, a storable non-zero CreatedAt, and at least
// one version; versions need distinct Numbers >= 1 (in any order), non-empty
// ObjectIDs and non-zero CreatedAt. A zero DeletionDate is stored as "none".
//
// It returns an error wrapping ErrKeyExists if a key with k.ID exists (in
// any state), ErrAliasExists if k.Alias is non-empty, k is not Deleted and
// another key that is not Deleted holds the alias (aliases compare
// case-sensitively; the empty alias is never unique), and an unclassified
// error if a version's ObjectID already belongs to a stored version.
func (s *SQLite) CreateKey(ctx context.Context, k Key) (err error) {
	if err := validateKey(k); err != nil {
		return fmt.Errorf("store: create key %s: %w", k.ID, err)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: create key %s: %w", k.ID, err)
		}
	}()

	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }() // no-op after Commit

	var one int
	switch err := tx.QueryRowContext(ctx, `SELECT 1 FROM keys WHERE id = ?`, k.ID).Scan(&one); {
	case err == nil:
		return ErrKeyExists
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	if k.Alias != "" && k.State != stateDeleted {
		var holder string
		err := tx.QueryRowContext(ctx,
			`SELECT id FROM keys WHERE alias = ? AND state <> 'Deleted' AND alias <> '' LIMIT 1`,
			k.Alias).Scan(&holder)
		switch {
		case err == nil:
			return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
		case !errors.Is(err, sql.ErrNoRows):
			return err
		}
	}

	created, _ := toNanos(k.CreatedAt)
	_, err = tx.ExecContext(ctx,
		`INSERT INTO keys (id, alias, description, usage, state, origin, created_at, deletion_date,
		                   rotation_enabled, rotate_days, last_rotated_at, gen, mac, public_key)
		 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.ID, k.Alias, k.Description, k.Usage, k.State, k.Origin, created, nullTime(k.DeletionDate),
		boolInt(k.RotationEnabled), int64(k.RotateDays), nullTime(k.LastRotatedAt), int64(k.Gen), k.MAC, k.PublicKey)
	switch {
	case isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY):
		return ErrKeyExists
	case isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE):
		return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
	case err != nil:
		return err
	}
	if err := setMaterialSQLite(ctx, tx, k); err != nil {
		return err
	}

	insVersion, err := tx.PrepareContext(ctx,
		`INSERT INTO key_versions (key_id, version, object_id, created_at, usage_reserved, mac) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer insVersion.Close()
	delPending, err := tx.PrepareContext(ctx, `DELETE FROM pending_objects WHERE object_id = ?`)
	if err != nil {
		return err
	}
	defer delPending.Close()
	for _, v := range k.Versions {
		vc, _ := toNanos(v.CreatedAt)
		if _, err := insVersion.ExecContext(ctx, k.ID, int64(v.Number), v.ObjectID, vc, int64(v.UsageReserved), v.MAC); err != nil {
			if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE) {
				return fmt.Errorf("version %d: object id %x already used by a stored key version", v.Number, v.ObjectID)
			}
			return fmt.Errorf("version %d: %w", v.Number, err)
		}
		if _, err := delPending.ExecContext(ctx, v.ObjectID); err != nil {
			return fmt.Errorf("version %d: delete pending object: %w", v.Number, err)
		}
	}
	if err := sqliteReplaceTags(ctx, tx, k.ID, k.Tags); err != nil {
		return err
	}
	return tx.Commit()
}

// GetKey returns the key with id and its versions in ascending order of
// Number. It returns an error wrapping ErrNotFound if there is no such key.
// It is safe for concurrent use and reads a consistent snapshot.
func (s *SQLite) GetKey(ctx context.Context, id string) (_ Key, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: get key %s: %w", id, err)
		}
	}()
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Key{}, err
	}
	defer func() { _ = tx.Rollback() }()

	k, err := scanKey(tx.QueryRowContext(ctx, `SELECT `+keyColumns+` FROM keys WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Key{}, ErrNotFound
	}
	if err != nil {
		return Key{}, err
	}
	rows, err := tx.QueryContext(ctx,
		`SELECT version, object_id, created_at, usage_reserved, mac FROM key_versions WHERE key_id = ? ORDER BY version`, id)
	if err != nil {
		return Key{}, err
	}
	defer rows.Close()
	for rows.Next() {
		v, err := scanVersion(rows, nil)
		if err != nil {
			return Key{}, err
		}
		k.Versions = append(k.Versions, v)
	}
	if err := rows.Err(); err != nil {
		return Key{}, err
	}
	one := []Key{k}
	if err := sqliteLoadTags(ctx, tx, one, nil); err != nil {
		return Key{}, err
	}
	return one[0], nil
}

// ListKeys returns every key, in any state, with its versions (ascending),
// ordered by CreatedAt then ID. It reads a consistent snapshot with two
// queries regardless of the number of keys. It returns an empty slice, not
// an error, if there are none.
func (s *SQLite) ListKeys(ctx context.Context) (_ []Key, err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: list keys: %w", err)
		}
	}()
	tx, err := s.r.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer func() { _ = tx.Rollback() }()

	keys := []Key{}
	index := map[string]int{}
	rows, err := tx.QueryContext(ctx, `SELECT `+keyColumns+` FROM keys ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		k, err := scanKey(rows)
		if err != nil {
			return nil, err
		}
		index[k.ID] = len(keys)
		keys = append(keys, k)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	rows.Close()

	vrows, err := tx.QueryContext(ctx,
		`SELECT key_id, version, object_id, created_at, usage_reserved, mac FROM key_versions ORDER BY key_id, version`)
	if err != nil {
		return nil, err
	}
	defer vrows.Close()
	for vrows.Next() {
		var keyID string
		v, err := scanVersion(vrows, &keyID)
		if err != nil {
			return nil, err
		}
		i, ok := index[keyID]
		if !ok { // impossible with foreign keys on; be defensive
			return nil, fmt.Errorf("version %d of unknown key %s", v.Number, keyID)
		}
		keys[i].Versions = append(keys[i].Versions, v)
	}
	if err := vrows.Err(); err != nil {
		return nil, err
	}
	vrows.Close()
	if err := sqliteLoadTags(ctx, tx, keys, index); err != nil {
		return nil, err
	}
	return keys, nil
}

// CountKeys returns the number of keys whose State is not "Deleted". It is
// safe for concurrent use.
func (s *SQLite) CountKeys(ctx context.Context) (int, error) {
	var n int
	if err := s.r.QueryRowContext(ctx, `SELECT count(*) FROM keys WHERE state <> 'Deleted'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count keys: %w", err)
	}
	return n, nil
}

// ObjectIDs returns the ObjectID of every version of every key, in any
// state (including Deleted), ordered by key ID then version. Pending objects
// are not included. It returns an empty slice, not an error, if there are
// none. It is safe for concurrent use.
func (s *SQLite) ObjectIDs(ctx context.Context) ([][]byte, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT object_id FROM key_versions ORDER BY key_id, version`)
	if err != nil {
		return nil, fmt.Errorf("store: list object ids: %w", err)
	}
	defer rows.Close()
	out := [][]byte{}
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("store: list object ids: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list object ids: %w", err)
	}
	return out, nil
}

const keyColumns = `id, alias, description, usage, state, origin, created_at, deletion_date, rotation_enabled, rotate_days, last_rotated_at, gen, mac, public_key, material_valid_to, material_check, material_loaded`

// scanKey scans the keyColumns of one row.
func scanKey(row interface{ Scan(...any) error }) (Key, error) {
	var (
		k           Key
		created     int64
		deletion    sql.NullInt64
		rotation    int64
		rotateDays  int64
		lastRotated sql.NullInt64
		gen         int64
		validTo     sql.NullInt64
		loaded      int64
	)
	if err := row.Scan(&k.ID, &k.Alias, &k.Description, &k.Usage, &k.State, &k.Origin, &created, &deletion,
		&rotation, &rotateDays, &lastRotated, &gen, &k.MAC, &k.PublicKey, &validTo, &k.MaterialCheck, &loaded); err != nil {
		return Key{}, err
	}
	if validTo.Valid {
		k.MaterialValidTo = fromNanos(validTo.Int64)
	}
	k.MaterialLoaded = loaded == 1
	k.CreatedAt = fromNanos(created)
	if deletion.Valid {
		k.DeletionDate = fromNanos(deletion.Int64)
	}
	k.RotationEnabled = rotation == 1
	k.RotateDays = uint32(rotateDays) // CHECK constraint keeps it in range
	if lastRotated.Valid {
		k.LastRotatedAt = fromNanos(lastRotated.Int64)
	}
	k.Gen = uint64(gen) // CHECK constraint keeps it >= 0
	return k, nil
}

// scanVersion scans (key_id,) version, object_id, created_at,
// usage_reserved, mac; key_id only if keyID is not nil.
func scanVersion(rows *sql.Rows, keyID *string) (Version, error) {
	var (
		v        Version
		number   int64
		created  int64
		reserved int64
	)
	dest := []any{&number, &v.ObjectID, &created, &reserved, &v.MAC}
	if keyID != nil {
		dest = append([]any{keyID}, dest...)
	}
	if err := rows.Scan(dest...); err != nil {
		return Version{}, err
	}
	v.Number = uint32(number) // CHECK constraint keeps it in range
	v.CreatedAt = fromNanos(created)
	v.UsageReserved = uint64(reserved) // CHECK constraint keeps it >= 0
	return v, nil
}
