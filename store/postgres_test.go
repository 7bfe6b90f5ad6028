package store_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"hsmkms/kms"
	"hsmkms/store"
	"hsmkms/store/pgtest"
)

var _ kms.Store = (*store.Postgres)(nil)

// TestMain stops the shared throwaway PostgreSQL server after the tests.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// postgresHarness runs the conformance suite against *store.Postgres, one
// fresh database per storage on a real (throwaway) server.
var postgresHarness = storeHarness{
	NewStorage: func(t *testing.T) func(t *testing.T) kms.Store {
		dsn := pgtest.Shared(t).NewDatabase(t)
		return func(t *testing.T) kms.Store { return openPostgres(t, dsn) }
	},
	SetState: func(t *testing.T, s kms.Store, id, state string, deletionDate time.Time) {
		t.Helper()
		var dd *int64
		if !deletionDate.IsZero() {
			n := deletionDate.UnixNano()
			dd = &n
		}
		tag, err := s.(*store.Postgres).Pool().Exec(t.Context(),
			`UPDATE keys SET state = $1, deletion_date = $2 WHERE id = $3`, state, dd, id)
		if err != nil {
			t.Fatalf("set state: %v", err)
		}
		if tag.RowsAffected() != 1 {
			t.Fatalf("set state of %s: %d rows affected", id, tag.RowsAffected())
		}
	},
}

func TestPostgresConformance(t *testing.T) {
	t.Parallel()
	testStore(t, postgresHarness)
	testLifecycle(t, postgresHarness)
}

func openPostgres(t *testing.T, dsn string) *store.Postgres {
	t.Helper()
	s, err := store.OpenPostgres(t.Context(), store.PostgresConfig{DSN: dsn, MaxConns: 8})
	if err != nil {
		t.Fatalf("OpenPostgres: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// Nodes starting at once migrate exactly once, and all see the full schema.
func TestPostgresConcurrentMigration(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	const nodes = 6
	var wg sync.WaitGroup
	errs := make(chan error, nodes)
	for range nodes {
		wg.Go(func() {
			s, err := store.OpenPostgres(t.Context(), store.PostgresConfig{DSN: dsn, MaxConns: 2})
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			if _, err := s.ListKeys(t.Context()); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	s := openPostgres(t, dsn)
	var v int
	if err := s.Pool().QueryRow(t.Context(), `SELECT version FROM hsmkms_schema`).Scan(&v); err != nil || v != len(store.PostgresMigrations()) {
		t.Fatalf("schema version %d, %v; want %d", v, err, len(store.PostgresMigrations()))
	}
}

func TestPostgresMigrationRules(t *testing.T) {
	t.Parallel()
	steps := store.PostgresMigrations()
	tests := []struct {
		name    string
		prepare func(t *testing.T, dsn string)
		wantErr error // nil: any error
	}{
		{"schema too new", func(t *testing.T, dsn string) {
			s, err := store.OpenPostgresWithMigrations(t.Context(), store.PostgresConfig{DSN: dsn},
				append(slices.Clone(steps), `CREATE TABLE future (x int)`))
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
		}, store.ErrSchemaTooNew},
		{"foreign tables", func(t *testing.T, dsn string) {
			s, err := store.OpenPostgresWithMigrations(t.Context(), store.PostgresConfig{DSN: dsn}, nil)
			if err != nil {
				t.Fatal(err)
			}
			// A database of some other application: tables, no version.
			if _, err := s.Pool().Exec(t.Context(), `DROP TABLE hsmkms_schema; CREATE TABLE other (x int)`); err != nil {
				t.Fatal(err)
			}
			s.Close()
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dsn := pgtest.Shared(t).NewDatabase(t)
			tc.prepare(t, dsn)
			s, err := store.OpenPostgres(t.Context(), store.PostgresConfig{DSN: dsn})
			if err == nil {
				s.Close()
				t.Fatal("OpenPostgres succeeded")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
		})
	}
	// A failing step leaves the schema as it was (one transaction).
	dsn := pgtest.Shared(t).NewDatabase(t)
	if _, err := store.OpenPostgresWithMigrations(t.Context(), store.PostgresConfig{DSN: dsn},
		append(slices.Clone(steps), `CREATE TABLE x (`)); err == nil {
		t.Fatal("broken step accepted")
	}
	s := openPostgres(t, dsn)
	if _, err := s.ListKeys(t.Context()); err != nil {
		t.Fatalf("after a failed migration: %v", err)
	}
}

func TestPostgresMalformedDSNIsNotEchoed(t *testing.T) {
	t.Parallel()
	_, err := store.OpenPostgres(t.Context(), store.PostgresConfig{DSN: "postgres://u:s3cret@[::1"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("error %v", err)
	}
}

// Blocks claimed by many nodes at once never overlap and never pass the
// limit; the reservation never goes backwards.
func TestPostgresClaimUsage(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	nodes := []*store.Postgres{openPostgres(t, dsn), openPostgres(t, dsn), openPostgres(t, dsn)}
	k := newKey(1, "a", 1)
	mustCreate(t, nodes[0], k)
	const limit, block = 1000, 7
	var mu sync.Mutex
	claimed := make([]bool, limit+1)
	var wg sync.WaitGroup
	for i := range 12 {
		wg.Go(func() {
			s := nodes[i%len(nodes)]
			for {
				from, end, err := s.ClaimUsage(t.Context(), k.ID, 1, block, limit)
				if err != nil {
					t.Error(err)
					return
				}
				if from == end {
					return
				}
				mu.Lock()
				for n := from + 1; n <= end; n++ {
					if n > limit || claimed[n] {
						t.Errorf("number %d claimed twice or beyond the limit", n)
					}
					claimed[n] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for n := 1; n <= limit; n++ {
		if !claimed[n] {
			t.Fatalf("number %d never claimed", n)
		}
	}
	if _, _, err := nodes[0].ClaimUsage(t.Context(), k.ID, 2, 1, limit); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("absent version: %v", err)
	}
	got, _ := nodes[1].GetKey(t.Context(), k.ID)
	if got.Versions[0].UsageReserved != limit {
		t.Fatalf("reservation %d", got.Versions[0].UsageReserved)
	}
}

func TestPostgresNonces(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	now := time.Unix(1_800_000_000, 0)
	key := []byte("AKIDx\x00" + "4711")
	tests := []struct {
		s         *store.Postgres
		now       time.Time
		wantFresh bool
	}{
		{a, now, true},
		{b, now, false},                        // replay on another node
		{a, now.Add(300 * time.Second), false}, // still inside its window
		{b, now.Add(301 * time.Second), true},  // expired: usable again
		{a, now.Add(302 * time.Second), false},
	}
	for i, tc := range tests {
		fresh, err := tc.s.UseNonce(t.Context(), key, tc.now.Add(300*time.Second), tc.now)
		if err != nil || fresh != tc.wantFresh {
			t.Fatalf("step %d: fresh %v, %v; want %v", i, fresh, err, tc.wantFresh)
		}
	}
	// Concurrent uses of one nonce on several nodes: exactly one is fresh.
	var wg sync.WaitGroup
	var mu sync.Mutex
	freshCount := 0
	for i := range 20 {
		wg.Go(func() {
			s := []*store.Postgres{a, b}[i%2]
			fresh, err := s.UseNonce(t.Context(), []byte("contended"), now.Add(time.Minute), now)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			if fresh {
				freshCount++
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	if freshCount != 1 {
		t.Fatalf("%d fresh uses, want 1", freshCount)
	}
	if err := a.PurgeNonces(t.Context(), now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
}

// Changes committed on one node are delivered to the Watch of another.
func TestPostgresWatch(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ch := make(chan store.Change, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- b.Watch(ctx, 50*time.Millisecond, func(c store.Change) {
			if c.Kind != store.ChangeAlive {
				ch <- c
			}
		})
	}()
	defer func() { cancel(); <-done }()
	want := func(kind store.ChangeKind, id string) {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case c := <-ch:
				if c.Kind == kind && c.ID == id {
					return
				}
			case <-timeout:
				t.Fatalf("no change %v %q", kind, id)
			}
		}
	}
	want(store.ChangeAll, "")
	k := newKey(1, "w", 1)
	mustCreate(t, a, k)
	want(store.ChangeKey, k.ID)
	k.State = "Disabled"
	k.Gen++
	if err := a.UpdateKey(t.Context(), k); err != nil {
		t.Fatal(err)
	}
	want(store.ChangeKey, k.ID)
	c := store.Credential{SecretID: "AKIDwatch", Name: "w", SealedKey: []byte("s"), KEKObjectID: []byte("k"), Policy: "{}", Enabled: true, CreatedAt: baseTime}
	if err := a.CreateCredential(t.Context(), c); err != nil {
		t.Fatal(err)
	}
	want(store.ChangeCredential, c.SecretID)
	if got, err := b.GetCredential(t.Context(), c.SecretID); err != nil || got.Name != "w" {
		t.Fatalf("GetCredential: %+v, %v", got, err)
	}
	// A failed write notifies nobody.
	if err := a.UpdateKey(t.Context(), newKey(9, "", 1)); !errors.Is(err, store.ErrNotFound) {
		t.Fatal(err)
	}
	select {
	case c := <-ch:
		t.Fatalf("unexpected change %+v", c)
	case <-time.After(200 * time.Millisecond):
	}
}

// Exactly one node holds the maintenance lock; it moves when the holder
// goes away. Key locks exclude each other across nodes.
func TestPostgresLocks(t *testing.T) {
	t.Parallel()
	dsn := pgtest.Shared(t).NewDatabase(t)
	a, b := openPostgres(t, dsn), openPostgres(t, dsn)
	ctx := t.Context()
	for i, step := range []struct {
		s    *store.Postgres
		want bool
	}{{a, true}, {b, false}, {a, true}, {b, false}} {
		if got, err := step.s.TryMaintenanceLock(ctx); err != nil || got != step.want {
			t.Fatalf("step %d: %v, %v; want %v", i, got, err, step.want)
		}
	}
	a.Close()
	pollUntil(t, 5*time.Second, "the maintenance lock moves to b", func() bool {
		got, err := b.TryMaintenanceLock(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return got
	})

	c := openPostgres(t, dsn)
	unlock, err := b.LockKey(ctx, keyID(1))
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan time.Time, 1)
	go func() {
		u, err := c.LockKey(ctx, keyID(1))
		if err != nil {
			t.Error(err)
			got <- time.Time{}
			return
		}
		got <- time.Now()
		u()
	}()
	// c's LockKey is waiting once the server shows its advisory lock
	// request not granted.
	waitingLocks := func() int {
		var n int
		err := b.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_locks
			WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	pollUntil(t, 10*time.Second, "c's LockKey waits for b's lock", func() bool { return waitingLocks() == 1 })
	released := time.Now()
	unlock()
	if at := <-got; at.Before(released) {
		t.Fatalf("second LockKey returned while the first held the lock")
	}
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	u2, err := b.LockKey(tctx, keyID(2)) // another key: not blocked
	if err != nil {
		t.Fatal(err)
	}
	u2()
}

// An unreachable database is reported as ErrUnavailable.
func TestPostgresUnavailable(t *testing.T) {
	t.Parallel()
	_, err := store.OpenPostgres(t.Context(), store.PostgresConfig{DSN: fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable&connect_timeout=2", 1)})
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("open on a closed port: %v, want ErrUnavailable", err)
	}
}

// TestPostgresTestsUseVerifiedTLS: the throwaway server the PostgreSQL
// tests use speaks TLS only, and the tests' DSNs verify its certificate
// and host name (sslmode=verify-full), as kmsd requires off loopback.
func TestPostgresTestsUseVerifiedTLS(t *testing.T) {
	srv := pgtest.Shared(t)
	if os.Getenv(pgtest.EnvDSN) != "" {
		t.Log("external server (" + pgtest.EnvDSN + "): its transport is the caller's")
		return
	}
	dsn := srv.NewDatabase(t)
	if !strings.Contains(dsn, "sslmode=verify-full") || srv.CAFile == "" {
		t.Fatalf("DSN without verify-full: %s", dsn)
	}
	s, err := store.OpenPostgres(t.Context(), store.PostgresConfig{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	conn, err := pgx.Connect(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var ssl bool
	var version string
	if err := conn.QueryRow(t.Context(), `SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()`).Scan(&ssl, &version); err != nil || !ssl {
		t.Fatalf("connection not over TLS: %v %v", ssl, err)
	}
	t.Logf("TLS %s", version)
	// Without TLS the server refuses; without its CA the client refuses.
	plain := strings.Replace(dsn, "sslmode=verify-full", "sslmode=disable", 1)
	if c, err := pgx.Connect(t.Context(), plain); err == nil {
		c.Close(context.Background())
		t.Fatal("a connection without TLS was accepted")
	}
	other := strings.Replace(dsn, "sslrootcert=", "sslrootcert=/nonexistent", 1)
	if c, err := pgx.Connect(t.Context(), other); err == nil {
		c.Close(context.Background())
		t.Fatal("a connection without the server's CA was accepted")
	}
}

// pollUntil calls cond every 10 ms until it returns true, and fails the
// test if that takes longer than bound.
func pollUntil(t *testing.T, bound time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
