package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
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

// ChangeKind says what a Change names.
type ChangeKind int

const (
	// ChangeKey: the key Change.ID was created or changed.
	ChangeKey ChangeKind = iota + 1
	// ChangeCredential: the credential Change.ID was created, changed or
	// deleted.
	ChangeCredential
	// ChangeAll: anything may have changed (the watch was (re)connected;
	// notifications sent while it was down are lost). Re-read everything.
	ChangeAll
	// ChangeAlive: the watch connection was found alive just now; every
	// change committed before the previous ChangeAlive has been delivered.
	ChangeAlive
)

// Change is one notification delivered by (*Postgres).Watch.
type Change struct {
	Kind ChangeKind
	ID   string // key id or SecretId; "" for ChangeAll and ChangeAlive
}

// notifyChannel is the LISTEN/NOTIFY channel of committed metadata changes.
// Payloads are "k:<keyID>" and "c:<SecretId>".
const notifyChannel = "hsmkms_changes"

// Advisory lock ids (pg_advisory_lock(class, id)). class 0x484b4d53 ("HKMS")
// is hsmkms's; ids 1 and 2 are the migration and maintenance locks, keys
// use class+1 with a hash of their id.
const (
	lockClass       = int32(applicationID)
	lockMigration   = int32(1)
	lockMaintenance = int32(2)
	lockClassKeys   = int32(applicationID + 1)
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
}

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

// notify queues a change notification, sent when tx commits.
func notify(ctx context.Context, tx pgx.Tx, payload string) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, payload)
	return err
}

// write runs f in a transaction and classifies its error.
func (p *Postgres) write(ctx context.Context, f func(tx pgx.Tx) error) error {
	return classify(pgx.BeginFunc(ctx, p.pool, f))
}

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
			                   rotation_enabled, rotate_days, last_rotated_at, gen, mac)
			 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)`,
			k.ID, k.Alias, k.Description, k.Usage, k.State, k.Origin, created, nullNanos(k.DeletionDate),
			k.RotationEnabled, int64(k.RotateDays), nullNanos(k.LastRotatedAt), int64(k.Gen), k.MAC)
		if err != nil {
			switch code, constraint := pgConstraint(err); {
			case code == "23505" && constraint == "keys_pkey":
				return ErrKeyExists
			case code == "23505" && constraint == "keys_alias_live":
				return fmt.Errorf("alias %q: %w", k.Alias, ErrAliasExists)
			}
			return classify(err)
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
		return notify(ctx, tx, "k:"+k.ID)
	})
}

const pgKeyColumns = `id, alias, description, usage, state, origin, created_at, deletion_date, rotation_enabled, rotate_days, last_rotated_at, gen, mac`

func pgScanKey(row pgx.Row) (Key, error) {
	var (
		k                     Key
		created, rotateDays   int64
		deletion, lastRotated *int64
		gen                   int64
	)
	if err := row.Scan(&k.ID, &k.Alias, &k.Description, &k.Usage, &k.State, &k.Origin, &created, &deletion,
		&k.RotationEnabled, &rotateDays, &lastRotated, &gen, &k.MAC); err != nil {
		return Key{}, err
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
		return rows.Err()
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
		return vrows.Err()
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
func (p *Postgres) UpdateKey(ctx context.Context, k Key) (err error) {
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: update key %s: %w", k.ID, err)
		}
	}()
	if k.ID == "" {
		return errors.New("invalid key: empty id")
	}
	if k.Gen > math.MaxInt64 {
		return errors.New("invalid key: generation above 2^63-1")
	}
	for name, t := range map[string]time.Time{"deletion date": k.DeletionDate, "last rotated at": k.LastRotatedAt} {
		if !t.IsZero() {
			if _, err := toNanos(t); err != nil {
				return fmt.Errorf("invalid key: %s: %w", name, err)
			}
		}
	}
	return p.write(ctx, func(tx pgx.Tx) error {
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
		return notify(ctx, tx, "k:"+k.ID)
	})
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

// LockKey takes a cluster-wide lock on keyID, waiting for it within ctx,
// and returns the function that releases it. Nodes hold it around every
// change to a key (read the key, act, write), so changes made on different
// nodes never overwrite each other. If the holder dies, the database
// releases the lock when the connection drops.
func (p *Postgres) LockKey(ctx context.Context, keyID string) (unlock func(), err error) {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: lock key %s: %w", keyID, classify(err))
	}
	h := fnv.New32a()
	h.Write([]byte(keyID))
	id := int32(h.Sum32())
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1, $2)`, lockClassKeys, id); err != nil {
		// The session may hold the lock if the error came late: drop it.
		_ = c.Conn().Close(context.Background())
		c.Release()
		return nil, fmt.Errorf("store: lock key %s: %w", keyID, classify(err))
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, lockClassKeys, id); err != nil {
			_ = c.Conn().Close(context.Background())
		}
		c.Release()
	}, nil
}

// TryMaintenanceLock reports whether this store holds the cluster-wide
// maintenance lock, taking it if it is free. Once taken it is held (on a
// dedicated connection) until Close or until that connection fails; every
// call checks the connection, so a holder that lost it learns so at its
// next call. Exactly one live node holds it at any time; when the holder
// dies, its session ends and another node takes the lock at its next try.
func (p *Postgres) TryMaintenanceLock(ctx context.Context) (bool, error) {
	p.leaderMu.Lock()
	defer p.leaderMu.Unlock()
	if p.leader != nil {
		if err := p.leader.Ping(ctx); err == nil {
			return true, nil
		}
		_ = p.leader.Conn().Close(context.Background())
		p.leader.Release()
		p.leader = nil
	}
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("store: maintenance lock: %w", classify(err))
	}
	var got bool
	if err := c.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, lockClass, lockMaintenance).Scan(&got); err != nil {
		_ = c.Conn().Close(context.Background())
		c.Release()
		return false, fmt.Errorf("store: maintenance lock: %w", classify(err))
	}
	if !got {
		c.Release()
		return false, nil
	}
	p.leader = c
	return true, nil
}

// Watch delivers the changes committed by every node (including this one)
// to changed, in commit order, until ctx is done; it then returns ctx's
// error. It keeps one connection LISTENing; after every (re)connection it
// delivers ChangeAll (changes made meanwhile were not delivered), and about
// every aliveEvery it checks the connection and delivers ChangeAlive.
// changed runs on Watch's goroutine and should return quickly.
func (p *Postgres) Watch(ctx context.Context, aliveEvery time.Duration, changed func(Change)) error {
	if aliveEvery <= 0 {
		aliveEvery = 250 * time.Millisecond
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := p.watchOnce(ctx, aliveEvery, changed)
		if ctx.Err() != nil {
			break
		}
		_ = err // the caller sees the outage through missing ChangeAlive
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	return ctx.Err()
}

func (p *Postgres) watchOnce(ctx context.Context, aliveEvery time.Duration, changed func(Change)) error {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn := c.Hijack() // never returned to the pool: it stays LISTENing
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return err
	}
	changed(Change{Kind: ChangeAll})
	changed(Change{Kind: ChangeAlive})
	for {
		wctx, cancel := context.WithTimeout(ctx, aliveEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			kind, id, ok := strings.Cut(n.Payload, ":")
			switch {
			case ok && kind == "k":
				changed(Change{Kind: ChangeKey, ID: id})
			case ok && kind == "c":
				changed(Change{Kind: ChangeCredential, ID: id})
			default:
				changed(Change{Kind: ChangeAll})
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
			pctx, cancel := context.WithTimeout(ctx, aliveEvery)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
			changed(Change{Kind: ChangeAlive})
		default:
			return err
		}
	}
}

// UseNonce records a legacy API (SecretId, Nonce) key as used until
// expiry and reports whether it was fresh, i.e. not recorded with an expiry
// at or after now. It is atomic across nodes: of concurrent uses of one key
// exactly one is fresh. Expired rows are removed by PurgeNonces.
func (p *Postgres) UseNonce(ctx context.Context, key []byte, expiry, now time.Time) (bool, error) {
	var got int
	err := p.pool.QueryRow(ctx,
		`INSERT INTO legacy_nonces (nonce, expires_at) VALUES ($1, $2)
		 ON CONFLICT (nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE legacy_nonces.expires_at < $3
		 RETURNING 1`, key, expiry.Unix(), now.Unix()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: use nonce: %w", classify(err))
	}
	return true, nil
}

// PurgeNonces deletes the nonces and the TC3 signatures (PublishSignatures)
// that expired before now.
func (p *Postgres) PurgeNonces(ctx context.Context, now time.Time) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM legacy_nonces WHERE expires_at < $1`, now.Unix()); err != nil {
		return fmt.Errorf("store: purge nonces: %w", classify(err))
	}
	if _, err := p.pool.Exec(ctx, `DELETE FROM tc3_signatures WHERE expires_at < $1`, now.Unix()); err != nil {
		return fmt.Errorf("store: purge signatures: %w", classify(err))
	}
	return nil
}

// nullNanos is the stored form of an optional time: NULL for the zero time.
func nullNanos(t time.Time) *int64 {
	if t.IsZero() {
		return nil
	}
	n, _ := toNanos(t)
	return &n
}
