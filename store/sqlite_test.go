package store_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hsmkms/kms"
	"hsmkms/store"
)

var _ kms.Store = (*store.SQLite)(nil)

// sqliteHarness runs the conformance suite against *store.SQLite.
var sqliteHarness = storeHarness{
	NewStorage: func(t *testing.T) func(t *testing.T) kms.Store {
		path := filepath.Join(t.TempDir(), "kms.db")
		return func(t *testing.T) kms.Store { return openSQLite(t, path) }
	},
	SetState: func(t *testing.T, s kms.Store, id, state string, deletionDate time.Time) {
		t.Helper()
		var dd sql.NullInt64
		if !deletionDate.IsZero() {
			dd = sql.NullInt64{Int64: deletionDate.UnixNano(), Valid: true}
		}
		res, err := s.(*store.SQLite).WriterDB().ExecContext(t.Context(),
			`UPDATE keys SET state = ?, deletion_date = ? WHERE id = ?`, state, dd, id)
		if err != nil {
			t.Fatalf("set state: %v", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			t.Fatalf("set state of %s: %d rows affected", id, n)
		}
	},
}

func TestSQLiteConformance(t *testing.T) {
	t.Parallel()
	testStore(t, sqliteHarness)
	testLifecycle(t, sqliteHarness)
}

// openSQLite opens path and closes the store when the test ends.
func openSQLite(t *testing.T, path string) *store.SQLite {
	t.Helper()
	s, err := store.Open(t.Context(), path)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func schemaVersion(t *testing.T, db *sql.DB) int {
	t.Helper()
	var v int
	if err := db.QueryRowContext(t.Context(), `PRAGMA user_version`).Scan(&v); err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenFreshCreatesSchema(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "nested", "dir") // missing parents
	path := filepath.Join(dir, "kms.db")
	s := openSQLite(t, path)
	ctx := t.Context()

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("database file mode = %v, want 0600", perm)
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := di.Mode().Perm(); perm&0o077 != 0 {
		t.Errorf("created directory mode = %v, want no group/other access", perm)
	}

	if v, want := schemaVersion(t, s.WriterDB()), len(store.Migrations()); v != want {
		t.Errorf("user_version = %d, want %d", v, want)
	}
	var tables []string
	rows, err := s.WriterDB().QueryContext(ctx, `SELECT name FROM sqlite_schema WHERE type IN ('table', 'index') AND name NOT LIKE 'sqlite_%' ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		tables = append(tables, n)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(tables, ","), "audit_anchors,credentials,import_params,key_tags,key_versions,keys,keys_alias_live,keys_created,pending_objects"; got != want {
		t.Errorf("schema objects = %s, want %s", got, want)
	}

	// Pragmas, on both pools, every connection (the DSN carries them).
	for _, tc := range []struct {
		db     *sql.DB
		pragma string
		want   string
	}{
		{s.WriterDB(), "journal_mode", "wal"},
		{s.WriterDB(), "synchronous", "2"}, // FULL
		{s.WriterDB(), "foreign_keys", "1"},
		{s.WriterDB(), "busy_timeout", "10000"},
		{s.ReaderDB(), "journal_mode", "wal"},
		{s.ReaderDB(), "foreign_keys", "1"},
		{s.ReaderDB(), "busy_timeout", "10000"},
		{s.ReaderDB(), "query_only", "1"},
	} {
		var got string
		if err := tc.db.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("PRAGMA %s = %s, want %s", tc.pragma, got, tc.want)
		}
	}
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping: %v", err)
	}
	// Foreign keys are enforced.
	_, err = s.WriterDB().ExecContext(ctx, `INSERT INTO key_versions (key_id, version, object_id, created_at) VALUES ('nope', 1, x'01', 1)`)
	if err == nil {
		t.Error("orphan key_versions row accepted: foreign keys not enforced")
	}
}

func TestOpenExistingFileKeepsMode(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "kms.db")
	if err := os.WriteFile(path, nil, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o640); err != nil { // umask-proof
		t.Fatal(err)
	}
	openSQLite(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o640 {
		t.Errorf("mode = %v, want 0640 (kept)", perm)
	}
}

func TestMigrations(t *testing.T) {
	t.Parallel()
	base := store.Migrations()
	if len(base) == 0 {
		t.Fatal("no migrations")
	}

	t.Run("ReopenKeepsDataAndVersion", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "kms.db")
		s, err := store.Open(t.Context(), path)
		if err != nil {
			t.Fatal(err)
		}
		k := newKey(1, "kept", 2)
		mustCreate(t, s, k)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = openSQLite(t, path)
		got, err := s.GetKey(t.Context(), k.ID)
		if err != nil {
			t.Fatal(err)
		}
		assertKey(t, got, k)
		if v := schemaVersion(t, s.WriterDB()); v != len(base) {
			t.Errorf("user_version = %d, want %d", v, len(base))
		}
	})

	t.Run("AppendedStepAppliesOnceAndKeepsData", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "kms.db")
		s := openSQLite(t, path)
		k := newKey(1, "kept", 1)
		mustCreate(t, s, k)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		steps := append(store.Migrations(),
			`CREATE TABLE audit (id INTEGER PRIMARY KEY, what TEXT NOT NULL) STRICT;
			 INSERT INTO audit (what) VALUES ('migrated');`)
		for range 2 { // the second open must not re-apply the step
			s2, err := store.OpenWithMigrations(t.Context(), path, steps)
			if err != nil {
				t.Fatal(err)
			}
			var n int
			if err := s2.WriterDB().QueryRowContext(t.Context(), `SELECT count(*) FROM audit`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("audit rows = %d, want 1 (step applied exactly once)", n)
			}
			if v := schemaVersion(t, s2.WriterDB()); v != len(steps) {
				t.Errorf("user_version = %d, want %d", v, len(steps))
			}
			got, err := s2.GetKey(t.Context(), k.ID)
			if err != nil {
				t.Fatal(err)
			}
			assertKey(t, got, k)
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
		}

		// This release's code now sees a newer schema and refuses it.
		_, err := store.Open(t.Context(), path)
		if !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("Open of newer schema: %v, want ErrSchemaTooNew", err)
		}
		if msg := err.Error(); !strings.Contains(msg, fmt.Sprint(len(steps))) || !strings.Contains(msg, fmt.Sprint(len(base))) {
			t.Errorf("error %q does not name both schema versions", msg)
		}
	})

	t.Run("FailingStepRollsBack", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "kms.db")
		s := openSQLite(t, path)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		steps := append(store.Migrations(),
			`CREATE TABLE half (x INTEGER) STRICT; INSERT INTO no_such_table VALUES (1);`)
		if _, err := store.OpenWithMigrations(t.Context(), path, steps); err == nil {
			t.Fatal("Open with failing step succeeded")
		}
		s = openSQLite(t, path)
		if v := schemaVersion(t, s.WriterDB()); v != len(base) {
			t.Errorf("user_version = %d, want %d (failed step rolled back)", v, len(base))
		}
		var n int
		if err := s.WriterDB().QueryRowContext(t.Context(), `SELECT count(*) FROM sqlite_schema WHERE name = 'half'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Error("table of the failed step exists: step not rolled back")
		}
	})

	t.Run("FutureVersionRefused", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "kms.db")
		s := openSQLite(t, path)
		if _, err := s.WriterDB().ExecContext(t.Context(), fmt.Sprintf("PRAGMA user_version = %d", len(base)+5)); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		before, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		_, err = store.Open(t.Context(), path)
		if !errors.Is(err, store.ErrSchemaTooNew) {
			t.Fatalf("Open: %v, want ErrSchemaTooNew", err)
		}
		after, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if string(before) != string(after) {
			t.Error("refused database file was modified")
		}
	})

	t.Run("ForeignDatabaseRefused", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			name  string
			setup string
		}{
			{"other tables", `CREATE TABLE something (x)`},
			{"other application id", `PRAGMA application_id = 42`},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "other.db")
				db, err := sql.Open("sqlite", path)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := db.ExecContext(t.Context(), tc.setup); err != nil {
					t.Fatal(err)
				}
				if err := db.Close(); err != nil {
					t.Fatal(err)
				}
				if s, err := store.Open(t.Context(), path); err == nil {
					_ = s.Close()
					t.Fatal("Open of a foreign database succeeded")
				}
			})
		}
	})

	t.Run("NotADatabase", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "junk.db")
		if err := os.WriteFile(path, []byte(strings.Repeat("this is not sqlite\n", 100)), 0o600); err != nil {
			t.Fatal(err)
		}
		if s, err := store.Open(t.Context(), path); err == nil {
			_ = s.Close()
			t.Fatal("Open of a non-database file succeeded")
		}
	})
}

func TestOpenPathWithURIMetacharacters(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "we?ird #dir%20")
	path := filepath.Join(dir, "k?ms#.db")
	s := openSQLite(t, path)
	mustCreate(t, s, newKey(1, "a", 1))
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("database not at the given path: %v", err)
	}
}

func TestOpenCanceledContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if s, err := store.Open(ctx, filepath.Join(t.TempDir(), "kms.db")); err == nil {
		_ = s.Close()
		t.Fatal("Open with canceled context succeeded")
	}
}

// seedKeys inserts keys 1..n as newKey(i, "seed-<i-1>", versionsPer) would
// build them (without description, usage and origin), in one statement per
// table: CreateKey would fsync once per key, and row-by-row inserts are slow
// under -race.
func seedKeys(tb testing.TB, s *store.SQLite, n, versionsPer int) {
	tb.Helper()
	ctx := context.Background()
	base := baseTime.UnixNano()
	ms := time.Millisecond.Nanoseconds()
	hour := time.Hour.Nanoseconds()
	if _, err := s.WriterDB().ExecContext(ctx, `
		WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < ?1)
		INSERT INTO keys (id, alias, description, usage, state, origin, created_at)
		SELECT printf('00000000-0000-4000-8000-%012d', i), 'seed-' || (i - 1), '', '', 'Enabled', '', ?2 + i * ?3
		FROM c`, n, base, ms); err != nil {
		tb.Fatal(err)
	}
	if _, err := s.WriterDB().ExecContext(ctx, `
		WITH RECURSIVE v(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM v WHERE j < ?1)
		INSERT INTO key_versions (key_id, version, object_id, created_at)
		SELECT id, j, CAST('obj-' || CAST(substr(id, 25) AS INTEGER) || '-' || j AS BLOB), created_at + (j - 1) * ?2
		FROM keys, v`, versionsPer, hour); err != nil {
		tb.Fatal(err)
	}
}

func TestListKeys10k(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("short")
	}
	s := openSQLite(t, filepath.Join(t.TempDir(), "kms.db"))
	const n = 10_000
	seedKeys(t, s, n, 3)
	start := time.Now()
	keys, err := s.ListKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ListKeys of %d keys x 3 versions: %v", n, time.Since(start))
	if len(keys) != n {
		t.Fatalf("ListKeys returned %d keys, want %d", len(keys), n)
	}
	for i, k := range keys {
		if k.ID != keyID(i+1) { // newKey's CreatedAt increases with i
			t.Fatalf("keys[%d].ID = %s, want %s", i, k.ID, keyID(i+1))
		}
		want := newKey(i+1, fmt.Sprintf("seed-%d", i), 3)
		want.Description, want.Usage, want.Origin = "", "", ""
		want.Gen, want.MAC = 0, nil // seeded without MACs
		for j := range want.Versions {
			want.Versions[j].MAC = nil
		}
		assertKey(t, k, want)
		if t.Failed() {
			t.FailNow()
		}
	}
	ids, err := s.ObjectIDs(t.Context())
	if err != nil || len(ids) != 3*n {
		t.Fatalf("ObjectIDs = %d, %v; want %d", len(ids), err, 3*n)
	}
	if c, err := s.CountKeys(t.Context()); err != nil || c != n {
		t.Fatalf("CountKeys = %d, %v; want %d", c, err, n)
	}
}

func BenchmarkListKeys10k(b *testing.B) {
	s, err := store.Open(context.Background(), filepath.Join(b.TempDir(), "kms.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	seedKeys(b, s, 10_000, 2)
	for b.Loop() {
		if _, err := s.ListKeys(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCreateKey(b *testing.B) {
	s, err := store.Open(context.Background(), filepath.Join(b.TempDir(), "kms.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	i := 0
	for b.Loop() {
		i++
		if err := s.CreateKey(context.Background(), newKey(i, "", 1)); err != nil {
			b.Fatal(err)
		}
	}
}
