package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
)

// applicationID marks an SQLite file as an hsmkms metadata database
// (PRAGMA application_id, bytes "HKMS"). Open refuses files that carry a
// different application ID.
const applicationID = 0x484b4d53

// migrations is the ordered list of schema migration steps. Step i (0-based)
// brings the schema from version i to version i+1; the current version is
// kept in PRAGMA user_version, so len(migrations) is the schema version this
// code writes.
//
// Rules for editing:
//   - Never modify or reorder a step that has been released: append a new one.
//   - A step may contain several statements separated by semicolons.
//   - Each step runs in its own transaction together with the user_version
//     update, so a failing step leaves the database at the previous version.
//   - Use STRICT tables and express invariants as constraints where cheap.
//
// Times are INTEGER nanoseconds since the Unix epoch, UTC (see toNanos).
var migrations = []string{
	// v1: keys, their versions and the pending-object intent log.
	`
CREATE TABLE keys (
	id            TEXT    NOT NULL PRIMARY KEY CHECK (id <> ''),
	alias         TEXT    NOT NULL,
	description   TEXT    NOT NULL,
	usage         TEXT    NOT NULL,
	state         TEXT    NOT NULL,
	origin        TEXT    NOT NULL,
	created_at    INTEGER NOT NULL,
	deletion_date INTEGER NULL
) STRICT;

-- An alias is unique among keys that are not Deleted; an empty alias means
-- "no alias" and is not constrained. CreateKey checks this too, inside its
-- transaction, to return ErrAliasExists; the index is the backstop.
CREATE UNIQUE INDEX keys_alias_live ON keys (alias)
	WHERE state <> 'Deleted' AND alias <> '';

-- ListKeys order.
CREATE INDEX keys_created ON keys (created_at, id);

CREATE TABLE key_versions (
	key_id     TEXT    NOT NULL REFERENCES keys (id),
	version    INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	object_id  BLOB    NOT NULL UNIQUE CHECK (length(object_id) > 0),
	created_at INTEGER NOT NULL,
	PRIMARY KEY (key_id, version)
) STRICT;

CREATE TABLE pending_objects (
	object_id  BLOB    NOT NULL PRIMARY KEY CHECK (length(object_id) > 0),
	key_id     TEXT    NOT NULL,
	version    INTEGER NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	created_at INTEGER NOT NULL
) STRICT;
`,
	// v2: API credentials. The SecretKey is stored sealed (AES-GCM inside
	// the HSM, under the token object kek_object_id), never in clear.
	`
CREATE TABLE credentials (
	secret_id     TEXT    NOT NULL PRIMARY KEY CHECK (secret_id <> ''),
	name          TEXT    NOT NULL,
	sealed_key    BLOB    NOT NULL CHECK (length(sealed_key) > 0),
	kek_object_id BLOB    NOT NULL CHECK (length(kek_object_id) > 0),
	policy        TEXT    NOT NULL,
	enabled       INTEGER NOT NULL CHECK (enabled IN (0, 1)),
	created_at    INTEGER NOT NULL
) STRICT;
`,
	// v3: automatic rotation settings of a key, and the durable usage
	// reservation of each key version.
	`
ALTER TABLE keys ADD COLUMN rotation_enabled INTEGER NOT NULL DEFAULT 0 CHECK (rotation_enabled IN (0, 1));
ALTER TABLE keys ADD COLUMN rotate_days INTEGER NOT NULL DEFAULT 0 CHECK (rotate_days BETWEEN 0 AND 4294967295);
ALTER TABLE keys ADD COLUMN last_rotated_at INTEGER NULL;
ALTER TABLE key_versions ADD COLUMN usage_reserved INTEGER NOT NULL DEFAULT 0 CHECK (usage_reserved >= 0);
`,
	// v4: authenticated metadata. Every security-relevant row carries a
	// MAC computed inside the HSM (NULL for rows written before: the
	// service seals them once, at the start that creates the MAC key),
	// and keys and credentials a generation raised by every change.
	`
ALTER TABLE keys ADD COLUMN gen INTEGER NOT NULL DEFAULT 0 CHECK (gen >= 0);
ALTER TABLE keys ADD COLUMN mac BLOB NULL;
ALTER TABLE key_versions ADD COLUMN mac BLOB NULL;
ALTER TABLE pending_objects ADD COLUMN mac BLOB NULL;
ALTER TABLE credentials ADD COLUMN gen INTEGER NOT NULL DEFAULT 0 CHECK (gen >= 0);
ALTER TABLE credentials ADD COLUMN mac BLOB NULL;
-- The head of each node's audit trail, sealed like the rows above.
CREATE TABLE audit_anchors (
	node TEXT    NOT NULL PRIMARY KEY CHECK (node <> ''),
	seq  INTEGER NOT NULL CHECK (seq >= 0),
	hash TEXT    NOT NULL,
	at   INTEGER NOT NULL,
	mac  BLOB    NULL
) STRICT;
`,
	// v5: asymmetric keys: the DER SubjectPublicKeyInfo of the key pair
	// (NULL for a symmetric key), covered by the key's MAC.
	`
ALTER TABLE keys ADD COLUMN public_key BLOB NULL;
`,
	// v6: imported key material (BYOK): the material's expiry, check value
	// hash and presence on the keys; the parameters of pending imports.
	`
ALTER TABLE keys ADD COLUMN material_valid_to INTEGER NULL;
ALTER TABLE keys ADD COLUMN material_check BLOB NULL;
ALTER TABLE keys ADD COLUMN material_loaded INTEGER NOT NULL DEFAULT 0 CHECK (material_loaded IN (0, 1));
CREATE TABLE import_params (
	token_hash         BLOB    NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
	key_id             TEXT    NOT NULL CHECK (key_id <> ''),
	algorithm          TEXT    NOT NULL,
	wrapping_object_id BLOB    NOT NULL UNIQUE CHECK (length(wrapping_object_id) > 0),
	created_at         INTEGER NOT NULL,
	valid_to           INTEGER NOT NULL,
	mac                BLOB    NULL
) STRICT;
`,
	// v7: resource tags of keys (tags.go). The key row's MAC covers them.
	`
CREATE TABLE key_tags (
	key_id    TEXT NOT NULL REFERENCES keys (id),
	tag_key   TEXT NOT NULL CHECK (tag_key <> ''),
	tag_value TEXT NOT NULL,
	PRIMARY KEY (key_id, tag_key)
) STRICT;
`,
}

// migrate brings the database behind db up to len(steps), one step per
// transaction. It is safe against a concurrent migrate from another process:
// the version is read inside each write transaction (BEGIN IMMEDIATE, see
// the _txlock DSN parameter), so a step is never applied twice.
func migrate(ctx context.Context, db *sql.DB, steps []string) error {
	for {
		done, err := migrateStep(ctx, db, steps)
		if err != nil || done {
			return err
		}
	}
}

// migrateStep applies the next pending step, if any, and reports whether the
// schema was already current.
func migrateStep(ctx context.Context, db *sql.DB, steps []string) (done bool, err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("store: migrate: begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }() // no-op after Commit

	var version, appID int64
	if err := tx.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&version); err != nil {
		return false, fmt.Errorf("store: migrate: read schema version: %w", err)
	}
	if err := tx.QueryRowContext(ctx, `PRAGMA application_id`).Scan(&appID); err != nil {
		return false, fmt.Errorf("store: migrate: read application id: %w", err)
	}
	if appID != 0 && appID != applicationID {
		return false, fmt.Errorf("store: migrate: not an hsmkms database (application_id %#x)", appID)
	}
	if version > int64(len(steps)) {
		return false, fmt.Errorf("store: migrate: database schema version %d, this release knows up to %d: %w",
			version, len(steps), ErrSchemaTooNew)
	}
	if version < 0 {
		return false, fmt.Errorf("store: migrate: invalid schema version %d", version)
	}
	if version == int64(len(steps)) {
		return true, nil
	}
	if version == 0 {
		// A file at version 0 must be empty: refuse to add our tables to
		// some other application's database.
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema`).Scan(&n); err != nil {
			return false, fmt.Errorf("store: migrate: inspect schema: %w", err)
		}
		if n != 0 {
			return false, errors.New("store: migrate: database is not empty and has no hsmkms schema version; refusing to modify it")
		}
		// PRAGMA takes no bound parameters; the value is a constant.
		if _, err := tx.ExecContext(ctx, `PRAGMA application_id = `+strconv.Itoa(applicationID)); err != nil {
			return false, fmt.Errorf("store: migrate: set application id: %w", err)
		}
	}

	next := version + 1
	if _, err := tx.ExecContext(ctx, steps[version]); err != nil {
		return false, fmt.Errorf("store: migrate to schema version %d: %w", next, err)
	}
	// PRAGMA takes no bound parameters; next is an integer computed here,
	// not outside input.
	if _, err := tx.ExecContext(ctx, `PRAGMA user_version = `+strconv.FormatInt(next, 10)); err != nil {
		return false, fmt.Errorf("store: migrate to schema version %d: set version: %w", next, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("store: migrate to schema version %d: commit: %w", next, err)
	}
	return false, nil
}
