package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// pgMigrations are the PostgreSQL schema steps. Steps 1-3 are those of the
// SQLite store (migrations) in PostgreSQL's dialect, one to one; steps 4
// and 5 add what only a database shared by several nodes needs (the
// signature v1 nonces, the TC3 signatures); step 6 is SQLite's step 4
// (authenticated metadata, audit anchors). The rules of migrations apply. Text columns that are compared or
// ordered use the "C" collation, so ordering is bytewise like SQLite's,
// whatever the database's locale. Times are BIGINT nanoseconds since the
// Unix epoch, UTC, as in SQLite (timestamptz keeps only microseconds).
var pgMigrations = []string{
	// v1
	`
CREATE TABLE keys (
	id            TEXT COLLATE "C" NOT NULL PRIMARY KEY CHECK (id <> ''),
	alias         TEXT COLLATE "C" NOT NULL,
	description   TEXT   NOT NULL,
	usage         TEXT   NOT NULL,
	state         TEXT   NOT NULL,
	origin        TEXT   NOT NULL,
	created_at    BIGINT NOT NULL,
	deletion_date BIGINT NULL
);
CREATE UNIQUE INDEX keys_alias_live ON keys (alias) WHERE state <> 'Deleted' AND alias <> '';
CREATE INDEX keys_created ON keys (created_at, id);
CREATE TABLE key_versions (
	key_id     TEXT COLLATE "C" NOT NULL REFERENCES keys (id),
	version    BIGINT NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	object_id  BYTEA  NOT NULL CONSTRAINT key_versions_object_id_key UNIQUE CHECK (length(object_id) > 0),
	created_at BIGINT NOT NULL,
	PRIMARY KEY (key_id, version)
);
CREATE TABLE pending_objects (
	object_id  BYTEA  NOT NULL PRIMARY KEY CHECK (length(object_id) > 0),
	key_id     TEXT COLLATE "C" NOT NULL,
	version    BIGINT NOT NULL CHECK (version BETWEEN 1 AND 4294967295),
	created_at BIGINT NOT NULL
);
`,
	// v2
	`
CREATE TABLE credentials (
	secret_id     TEXT COLLATE "C" NOT NULL PRIMARY KEY CHECK (secret_id <> ''),
	name          TEXT    NOT NULL,
	sealed_key    BYTEA   NOT NULL CHECK (length(sealed_key) > 0),
	kek_object_id BYTEA   NOT NULL CHECK (length(kek_object_id) > 0),
	policy        TEXT    NOT NULL,
	enabled       BOOLEAN NOT NULL,
	created_at    BIGINT  NOT NULL
);
`,
	// v3
	`
ALTER TABLE keys ADD COLUMN rotation_enabled BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE keys ADD COLUMN rotate_days BIGINT NOT NULL DEFAULT 0 CHECK (rotate_days BETWEEN 0 AND 4294967295);
ALTER TABLE keys ADD COLUMN last_rotated_at BIGINT NULL;
ALTER TABLE key_versions ADD COLUMN usage_reserved BIGINT NOT NULL DEFAULT 0 CHECK (usage_reserved >= 0);
`,
	// v4: legacy API nonces shared by every node (see UseNonce).
	`
CREATE TABLE legacy_nonces (
	nonce      BYTEA  NOT NULL PRIMARY KEY,
	expires_at BIGINT NOT NULL
);
CREATE INDEX legacy_nonces_expiry ON legacy_nonces (expires_at);
`,
	// v5: TC3 signatures accepted with an unsigned action, shared by every
	// node (see PublishSignatures).
	`
CREATE TABLE tc3_signatures (
	sig        BYTEA  NOT NULL PRIMARY KEY CHECK (length(sig) > 0),
	action     TEXT   NOT NULL,
	node       BYTEA  NOT NULL,
	seq        BIGSERIAL NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX tc3_signatures_seq ON tc3_signatures (seq);
CREATE INDEX tc3_signatures_expiry ON tc3_signatures (expires_at);
`,
	// v6: authenticated metadata (SQLite's v4).
	`
ALTER TABLE keys ADD COLUMN gen BIGINT NOT NULL DEFAULT 0 CHECK (gen >= 0);
ALTER TABLE keys ADD COLUMN mac BYTEA NULL;
ALTER TABLE key_versions ADD COLUMN mac BYTEA NULL;
ALTER TABLE pending_objects ADD COLUMN mac BYTEA NULL;
ALTER TABLE credentials ADD COLUMN gen BIGINT NOT NULL DEFAULT 0 CHECK (gen >= 0);
ALTER TABLE credentials ADD COLUMN mac BYTEA NULL;
CREATE TABLE audit_anchors (
	node TEXT COLLATE "C" NOT NULL PRIMARY KEY CHECK (node <> ''),
	seq  BIGINT NOT NULL CHECK (seq >= 0),
	hash TEXT   NOT NULL,
	at   BIGINT NOT NULL,
	mac  BYTEA  NULL
);
`,
	// v7: asymmetric keys (SQLite's v5).
	`
ALTER TABLE keys ADD COLUMN public_key BYTEA NULL;
`,
	// v8: imported key material (BYOK), as SQLite's v6.
	`
ALTER TABLE keys ADD COLUMN material_valid_to BIGINT NULL;
ALTER TABLE keys ADD COLUMN material_check BYTEA NULL;
ALTER TABLE keys ADD COLUMN material_loaded BOOLEAN NOT NULL DEFAULT false;
CREATE TABLE import_params (
	token_hash         BYTEA  NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
	key_id             TEXT COLLATE "C" NOT NULL CHECK (key_id <> ''),
	algorithm          TEXT   NOT NULL,
	wrapping_object_id BYTEA  NOT NULL UNIQUE CHECK (length(wrapping_object_id) > 0),
	created_at         BIGINT NOT NULL,
	valid_to           BIGINT NOT NULL,
	mac                BYTEA  NULL
);
`,
	// v9: resource tags of keys (SQLite's v7).
	`
CREATE TABLE key_tags (
	key_id    TEXT COLLATE "C" NOT NULL REFERENCES keys (id),
	tag_key   TEXT COLLATE "C" NOT NULL CHECK (tag_key <> ''),
	tag_value TEXT NOT NULL,
	PRIMARY KEY (key_id, tag_key)
);
`,
}

// migrate applies every pending step in one transaction holding the
// migration lock.
func (p *Postgres) migrate(ctx context.Context, steps []string) error {
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, $2)`, lockClass, lockMigration); err != nil {
			return fmt.Errorf("migrate: lock: %w", classify(err))
		}
		var hasVersion bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass('hsmkms_schema') IS NOT NULL`).Scan(&hasVersion); err != nil {
			return fmt.Errorf("migrate: inspect schema: %w", classify(err))
		}
		version := 0
		if hasVersion {
			if err := tx.QueryRow(ctx, `SELECT version FROM hsmkms_schema`).Scan(&version); err != nil {
				return fmt.Errorf("migrate: read schema version: %w", classify(err))
			}
		} else {
			var n int
			if err := tx.QueryRow(ctx,
				`SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()`).Scan(&n); err != nil {
				return fmt.Errorf("migrate: inspect schema: %w", classify(err))
			}
			if n != 0 {
				return errors.New("migrate: the database schema holds tables but no hsmkms schema version; refusing to modify it")
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE hsmkms_schema (version INTEGER NOT NULL, one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one));
				INSERT INTO hsmkms_schema (version) VALUES (0)`); err != nil {
				return fmt.Errorf("migrate: create schema version: %w", classify(err))
			}
		}
		if version > len(steps) {
			return fmt.Errorf("migrate: database schema version %d, this release knows up to %d: %w", version, len(steps), ErrSchemaTooNew)
		}
		for v := version; v < len(steps); v++ {
			if _, err := tx.Exec(ctx, steps[v]); err != nil {
				return fmt.Errorf("migrate to schema version %d: %w", v+1, classify(err))
			}
		}
		if version < len(steps) {
			if _, err := tx.Exec(ctx, `UPDATE hsmkms_schema SET version = $1`, len(steps)); err != nil {
				return fmt.Errorf("migrate: set version: %w", classify(err))
			}
		}
		return nil
	})
}
