package store

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
)

// AddPendingObject durably records p (see (*SQLite).AddPendingObject).
func (p *Postgres) AddPendingObject(ctx context.Context, po PendingObject) error {
	if err := validatePending(po); err != nil {
		return fmt.Errorf("store: add pending object %x: %w", po.ObjectID, err)
	}
	created, _ := toNanos(po.CreatedAt)
	_, err := p.pool.Exec(ctx,
		`INSERT INTO pending_objects (object_id, key_id, version, created_at, mac) VALUES ($1, $2, $3, $4, $5)`,
		po.ObjectID, po.KeyID, int64(po.Version), created, po.MAC)
	if err != nil {
		if code, _ := pgConstraint(err); code == "23505" {
			return fmt.Errorf("store: add pending object %x: object id already pending", po.ObjectID)
		}
		return fmt.Errorf("store: add pending object %x: %w", po.ObjectID, classify(err))
	}
	return nil
}

// PendingObjects returns every pending object, oldest first (ties by
// object ID); an empty slice if there are none.
func (p *Postgres) PendingObjects(ctx context.Context) ([]PendingObject, error) {
	rows, err := p.pool.Query(ctx,
		`SELECT object_id, key_id, version, created_at, mac FROM pending_objects ORDER BY created_at, object_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list pending objects: %w", classify(err))
	}
	out := []PendingObject{}
	for rows.Next() {
		var (
			po               PendingObject
			version, created int64
		)
		if err := rows.Scan(&po.ObjectID, &po.KeyID, &version, &created, &po.MAC); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: list pending objects: %w", classify(err))
		}
		po.Version = uint32(version)
		po.CreatedAt = fromNanos(created)
		out = append(out, po)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list pending objects: %w", classify(err))
	}
	return out, nil
}

// DeletePendingObject durably removes the pending object; idempotent.
func (p *Postgres) DeletePendingObject(ctx context.Context, objectID []byte) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM pending_objects WHERE object_id = $1`, objectID); err != nil {
		return fmt.Errorf("store: delete pending object %x: %w", objectID, classify(err))
	}
	return nil
}

// CreateKey durably stores k, its versions, and deletes their pending
// objects, in one transaction (see (*SQLite).CreateKey for the contract).
// Other nodes are notified when it commits.
func (p *Postgres) CreateKey(ctx context.Context, k Key) (err error) {
	if err := validateKey(k); err != nil {
		return fmt.Errorf("store: create key %s: %w", k.ID, err)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: create key %s: %w", k.ID, err)
		}
	}()
	return p.write(ctx, func(tx pgx.Tx) error {
		created, _ := toNanos(k.CreatedAt)
		_, err := tx.Exec(ctx,
			`INSERT INTO keys (id, alias, description, usage, state, origin, created_at, deletion_date,
			                   rotation_enabled, rotate_days, last_rotated_at, gen, mac, public_key)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
			k.ID, k.Alias, k.Description, k.Usage, k.State, k.Origin, created, nullNanos(k.DeletionDate),
			k.RotationEnabled, int64(k.RotateDays), nullNanos(k.LastRotatedAt), int64(k.Gen), k.MAC, k.PublicKey)
		if err != nil {
			switch code, constraint := pgConstraint(err); {
			case code == "23505" && constraint == "keys_pkey":
				return ErrKeyExists
			case code == "23505" && constraint == "keys_alias_live":
				return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
			}
			return classify(err)
		}
		if err := setMaterialPG(ctx, tx, k); err != nil {
			return err
		}
		for _, v := range k.Versions {
			vc, _ := toNanos(v.CreatedAt)
			if _, err := tx.Exec(ctx,
				`INSERT INTO key_versions (key_id, version, object_id, created_at, usage_reserved, mac) VALUES ($1, $2, $3, $4, $5, $6)`,
				k.ID, int64(v.Number), v.ObjectID, vc, int64(v.UsageReserved), v.MAC); err != nil {
				if code, _ := pgConstraint(err); code == "23505" {
					return fmt.Errorf("version %d: object id %x already used by a stored key version", v.Number, v.ObjectID)
				}
				return fmt.Errorf("version %d: %w", v.Number, classify(err))
			}
			if _, err := tx.Exec(ctx, `DELETE FROM pending_objects WHERE object_id = $1`, v.ObjectID); err != nil {
				return fmt.Errorf("version %d: delete pending object: %w", v.Number, classify(err))
			}
		}
		if err := pgReplaceTags(ctx, tx, k.ID, k.Tags); err != nil {
			return err
		}
		return notify(ctx, tx, "k:"+k.ID)
	})
}

const pgKeyColumns = `id, alias, description, usage, state, origin, created_at, deletion_date, rotation_enabled, rotate_days, last_rotated_at, gen, mac, public_key, material_valid_to, material_check, material_loaded`

func pgScanKey(row pgx.Row) (Key, error) {
	var (
		k                     Key
		created, rotateDays   int64
		deletion, lastRotated *int64
		gen                   int64
		validTo               *int64
	)
	if err := row.Scan(&k.ID, &k.Alias, &k.Description, &k.Usage, &k.State, &k.Origin, &created, &deletion,
		&k.RotationEnabled, &rotateDays, &lastRotated, &gen, &k.MAC, &k.PublicKey, &validTo, &k.MaterialCheck, &k.MaterialLoaded); err != nil {
		return Key{}, err
	}
	if validTo != nil {
		k.MaterialValidTo = fromNanos(*validTo)
	}
	k.CreatedAt = fromNanos(created)
	if deletion != nil {
		k.DeletionDate = fromNanos(*deletion)
	}
	k.RotateDays = uint32(rotateDays)
	if lastRotated != nil {
		k.LastRotatedAt = fromNanos(*lastRotated)
	}
	k.Gen = uint64(gen)
	return k, nil
}

func pgScanVersion(rows pgx.Rows, keyID *string) (Version, error) {
	var (
		v                         Version
		number, created, reserved int64
	)
	dest := []any{&number, &v.ObjectID, &created, &reserved, &v.MAC}
	if keyID != nil {
		dest = append([]any{keyID}, dest...)
	}
	if err := rows.Scan(dest...); err != nil {
		return Version{}, err
	}
	v.Number = uint32(number)
	v.CreatedAt = fromNanos(created)
	v.UsageReserved = uint64(reserved)
	return v, nil
}

// GetKey returns the key with id and its versions, ascending, from one
// consistent snapshot; ErrNotFound if there is no such key.
func (p *Postgres) GetKey(ctx context.Context, id string) (k Key, err error) {
	err = pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		k, err = pgScanKey(tx.QueryRow(ctx, `SELECT `+pgKeyColumns+` FROM keys WHERE id = $1`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx,
			`SELECT version, object_id, created_at, usage_reserved, mac FROM key_versions WHERE key_id = $1 ORDER BY version`, id)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			v, err := pgScanVersion(rows, nil)
			if err != nil {
				return err
			}
			k.Versions = append(k.Versions, v)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		rows.Close()
		one := []Key{k}
		if err := pgLoadTags(ctx, tx, one, nil); err != nil {
			return err
		}
		k = one[0]
		return nil
	})
	if err != nil {
		return Key{}, fmt.Errorf("store: get key %s: %w", id, classify(err))
	}
	return k, nil
}

// ListKeys returns every key with its versions, ordered by CreatedAt then
// ID, from one consistent snapshot; an empty slice if there are none.
func (p *Postgres) ListKeys(ctx context.Context) (keys []Key, err error) {
	err = pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		keys = []Key{}
		index := map[string]int{}
		rows, err := tx.Query(ctx, `SELECT `+pgKeyColumns+` FROM keys ORDER BY created_at, id`)
		if err != nil {
			return err
		}
		for rows.Next() {
			k, err := pgScanKey(rows)
			if err != nil {
				rows.Close()
				return err
			}
			index[k.ID] = len(keys)
			keys = append(keys, k)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		vrows, err := tx.Query(ctx, `SELECT key_id, version, object_id, created_at, usage_reserved, mac FROM key_versions ORDER BY key_id, version`)
		if err != nil {
			return err
		}
		defer vrows.Close()
		for vrows.Next() {
			var keyID string
			v, err := pgScanVersion(vrows, &keyID)
			if err != nil {
				return err
			}
			i, ok := index[keyID]
			if !ok {
				return fmt.Errorf("version %d of unknown key %s", v.Number, keyID)
			}
			keys[i].Versions = append(keys[i].Versions, v)
		}
		if err := vrows.Err(); err != nil {
			return err
		}
		vrows.Close()
		return pgLoadTags(ctx, tx, keys, index)
	})
	if err != nil {
		return nil, fmt.Errorf("store: list keys: %w", classify(err))
	}
	return keys, nil
}

// CountKeys returns the number of keys whose State is not "Deleted".
func (p *Postgres) CountKeys(ctx context.Context) (int, error) {
	var n int
	if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM keys WHERE state <> 'Deleted'`).Scan(&n); err != nil {
		return 0, fmt.Errorf("store: count keys: %w", classify(err))
	}
	return n, nil
}

// ObjectIDs returns the ObjectID of every version of every key, ordered by
// key ID then version; an empty slice if there are none.
func (p *Postgres) ObjectIDs(ctx context.Context) ([][]byte, error) {
	rows, err := p.pool.Query(ctx, `SELECT object_id FROM key_versions ORDER BY key_id, version`)
	if err != nil {
		return nil, fmt.Errorf("store: list object ids: %w", classify(err))
	}
	out := [][]byte{}
	for rows.Next() {
		var id []byte
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("store: list object ids: %w", classify(err))
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list object ids: %w", classify(err))
	}
	return out, nil
}

// UpdateKey durably replaces the mutable metadata of k.ID (see
// (*SQLite).UpdateKey for the contract). Other nodes are notified.
func (p *Postgres) UpdateKey(ctx context.Context, k Key) error {
	return p.UpdateKeys(ctx, k)
}

// UpdateKeys is UpdateKey for each of ks, in order, in one transaction
// (see (*SQLite).UpdateKeys). Other nodes are notified of each key.
func (p *Postgres) UpdateKeys(ctx context.Context, ks ...Key) error {
	for _, k := range ks {
		if err := checkKeyUpdate(k); err != nil {
			return fmt.Errorf("store: update key %s: %w", k.ID, err)
		}
	}
	var failed string
	err := p.write(ctx, func(tx pgx.Tx) error {
		for _, k := range ks {
			if err := updateKeyPG(ctx, tx, k); err != nil {
				failed = k.ID
				return err
			}
		}
		return nil
	})
	if err != nil {
		if failed != "" {
			return fmt.Errorf("store: update key %s: %w", failed, err)
		}
		return fmt.Errorf("store: update keys: %w", err)
	}
	return nil
}

// updateKeyPG is UpdateKey's change of one key within tx.
func updateKeyPG(ctx context.Context, tx pgx.Tx, k Key) error {
	tag, err := tx.Exec(ctx,
		`UPDATE keys SET alias = $1, description = $2, state = $3, deletion_date = $4,
		        rotation_enabled = $5, rotate_days = $6, last_rotated_at = $7, gen = $8, mac = $9
		 WHERE id = $10 AND gen < $8`,
		k.Alias, k.Description, k.State, nullNanos(k.DeletionDate),
		k.RotationEnabled, int64(k.RotateDays), nullNanos(k.LastRotatedAt), int64(k.Gen), k.MAC, k.ID)
	if code, constraint := pgConstraint(err); code == "23505" && constraint == "keys_alias_live" {
		return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
	}
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return pgMissingOrStale(ctx, tx, k.ID)
	}
	if err := setMaterialPG(ctx, tx, k); err != nil {
		return err
	}
	if err := pgReplaceTags(ctx, tx, k.ID, k.Tags); err != nil {
		return err
	}
	return notify(ctx, tx, "k:"+k.ID)
}

// AddVersion durably adds version v to key keyID, deletes its pending
// object and sets the key's LastRotatedAt, in one transaction (see
// (*SQLite).AddVersion). The key row is locked, so concurrent AddVersions
// from several nodes are serialised and only one can add a given number.
func (p *Postgres) AddVersion(ctx context.Context, k Key, v Version) (err error) {
	keyID := k.ID
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: add version %d to key %s: %w", v.Number, keyID, err)
		}
	}()
	if err := validateVersion(v); err != nil {
		return fmt.Errorf("invalid version: %w", err)
	}
	if k.Gen > math.MaxInt64 {
		return errors.New("generation above 2^63-1")
	}
	return p.write(ctx, func(tx pgx.Tx) error {
		var gen int64
		if err := tx.QueryRow(ctx, `SELECT gen FROM keys WHERE id = $1 FOR UPDATE`, keyID).Scan(&gen); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return ErrNotFound
			}
			return err
		}
		if gen >= int64(k.Gen) {
			return ErrStale
		}
		var top int64
		if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM key_versions WHERE key_id = $1`, keyID).Scan(&top); err != nil {
			return err
		}
		if int64(v.Number) != top+1 {
			return fmt.Errorf("version %d does not follow the highest version %d", v.Number, top)
		}
		created, _ := toNanos(v.CreatedAt)
		if _, err := tx.Exec(ctx,
			`INSERT INTO key_versions (key_id, version, object_id, created_at, usage_reserved, mac) VALUES ($1, $2, $3, $4, $5, $6)`,
			keyID, int64(v.Number), v.ObjectID, created, int64(v.UsageReserved), v.MAC); err != nil {
			if code, _ := pgConstraint(err); code == "23505" {
				return fmt.Errorf("object id %x already used by a stored key version", v.ObjectID)
			}
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM pending_objects WHERE object_id = $1`, v.ObjectID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE keys SET last_rotated_at = $1, gen = $2, mac = $3 WHERE id = $4`, created, int64(k.Gen), k.MAC, keyID); err != nil {
			return err
		}
		return notify(ctx, tx, "k:"+keyID)
	})
}

// ReserveUsage durably raises the usage reservation of a version to upTo
// (never lowers it); see (*SQLite).ReserveUsage. In a cluster use
// ClaimUsage instead: it hands each node a disjoint block.
func (p *Postgres) ReserveUsage(ctx context.Context, keyID string, version uint32, upTo uint64) error {
	if upTo > math.MaxInt64 {
		return fmt.Errorf("store: reserve usage of key %s version %d: %d above 2^63-1", keyID, version, upTo)
	}
	tag, err := p.pool.Exec(ctx,
		`UPDATE key_versions SET usage_reserved = GREATEST(usage_reserved, $1) WHERE key_id = $2 AND version = $3`,
		int64(upTo), keyID, int64(version))
	if err != nil {
		return fmt.Errorf("store: reserve usage of key %s version %d: %w", keyID, version, classify(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("store: reserve usage of key %s version %d: %w", keyID, version, ErrNotFound)
	}
	return nil
}

// ClaimUsage atomically claims the next block of at most n encryptions of
// a version, never past limit: it raises the version's reservation from r
// to min(r+n, limit) and returns (r, that). The caller owns the numbers
// r+1..end; from == end means the version is exhausted. Blocks claimed by
// different callers (nodes) never overlap and the reservation never goes
// backwards, so the encryptions of all nodes together never exceed limit.
// ErrNotFound if the key has no such version.
func (p *Postgres) ClaimUsage(ctx context.Context, keyID string, version uint32, n, limit uint64) (from, end uint64, err error) {
	if n == 0 || limit > math.MaxInt64 {
		return 0, 0, fmt.Errorf("store: claim usage of key %s version %d: invalid block %d or limit %d", keyID, version, n, limit)
	}
	err = p.write(ctx, func(tx pgx.Tx) error {
		var r int64
		err := tx.QueryRow(ctx, `SELECT usage_reserved FROM key_versions WHERE key_id = $1 AND version = $2 FOR UPDATE`,
			keyID, int64(version)).Scan(&r)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		from = uint64(r)
		end = max(from, min(from+min(n, limit), limit))
		if end == from {
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE key_versions SET usage_reserved = $1 WHERE key_id = $2 AND version = $3`,
			int64(end), keyID, int64(version))
		return err
	})
	if err != nil {
		return 0, 0, fmt.Errorf("store: claim usage of key %s version %d: %w", keyID, version, err)
	}
	return from, end, nil
}
