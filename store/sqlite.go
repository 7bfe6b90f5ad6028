package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"modernc.org/sqlite"
)

// stateDeleted is the Key.State value that frees a key's alias. It also
// appears, as a literal, in the partial unique index of schema v1.
const stateDeleted = "Deleted"

// busyTimeout is how long a connection waits for a lock held by another
// connection (another process, or a WAL checkpoint) before SQLITE_BUSY.
const busyTimeout = 10 * time.Second

// SQLite is the embedded metadata store: one SQLite database file in WAL
// mode with synchronous=FULL, so every method that writes has made its change
// durable (fsync'ed) when it returns nil.
//
// It holds two connection pools on the file: a single writer connection
// (SQLite admits one writer at a time; serialising writers in Go keeps them
// from ever seeing SQLITE_BUSY from each other and honours ctx while
// queueing) and a bounded pool of query_only reader connections, which WAL
// lets run concurrently with the writer.
//
// A *SQLite is safe for concurrent use by multiple goroutines. Other
// processes may open the same file (e.g. a backup tool); they are waited for
// up to a busy timeout of 10s.
//
// Times are stored as INTEGER nanoseconds since the Unix epoch and are
// returned in UTC with nanosecond precision; the location and monotonic
// clock reading of a stored time are not kept. Storable times are those
// between the years 1678 and 2262.
type SQLite struct {
	w *sql.DB // writer: exactly one connection
	r *sql.DB // readers: query_only connections
}

// Open opens the metadata database at path, creating the file (mode 0600)
// and its parent directories (mode 0700) if they are missing, and migrates
// its schema to the version this code writes. An existing file keeps its
// permissions.
//
// Open returns an error wrapping ErrSchemaTooNew, and leaves the file
// unmodified, if the database was written by a newer release. It refuses a
// file that is not an hsmkms database. ctx bounds the migrations.
//
// The caller must Close the returned store.
func Open(ctx context.Context, path string) (*SQLite, error) {
	return openWithMigrations(ctx, path, migrations)
}

func openWithMigrations(ctx context.Context, path string, steps []string) (_ *SQLite, err error) {
	if path == "" {
		return nil, errors.New("store: open: empty path")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := createFile(abs); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}

	// The writer is opened and migrated first: journal_mode=WAL is a
	// persistent property of the file, set by the writer's DSN.
	w, err := sql.Open("sqlite", dsn(abs,
		"journal_mode(WAL)",
		"synchronous(FULL)",
		"foreign_keys(1)",
	))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxLifetime(0)
	w.SetConnMaxIdleTime(0)
	defer func() {
		if err != nil {
			_ = w.Close()
		}
	}()
	if err := migrate(ctx, w, steps); err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}

	r, err := sql.Open("sqlite", dsn(abs,
		"foreign_keys(1)",
		"query_only(1)",
	))
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	n := max(4, runtime.GOMAXPROCS(0))
	r.SetMaxOpenConns(n)
	r.SetMaxIdleConns(n)
	r.SetConnMaxIdleTime(5 * time.Minute)
	s := &SQLite{w: w, r: r}
	if err := s.Ping(ctx); err != nil {
		_ = r.Close()
		return nil, fmt.Errorf("store: open %s: %w", abs, err)
	}
	return s, nil
}

// dsn returns the modernc.org/sqlite data source name for the file at the
// absolute path abs. Pragmas go through _pragma so that every connection the
// pool opens gets them; busy_timeout is applied first by the driver. Write
// transactions start with BEGIN IMMEDIATE (_txlock), so a transaction that
// reads before it writes cannot fail with SQLITE_BUSY on lock upgrade.
// mode=rw: the file has been created by createFile with the right mode;
// SQLite must not recreate it with default permissions.
func dsn(abs string, pragmas ...string) string {
	q := url.Values{}
	q.Set("mode", "rw")
	q.Set("_txlock", "immediate")
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busyTimeout.Milliseconds()))
	for _, p := range pragmas {
		q.Add("_pragma", p)
	}
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	return u.String()
}

// createFile creates the parent directories (0700) and an empty database
// file (0600) if it does not exist, and makes the new directory entry
// durable.
func createFile(abs string) error {
	dir := filepath.Dir(abs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(abs, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Close closes the database. It waits for nothing: the caller must ensure no
// method is running or called afterwards (such calls return errors).
func (s *SQLite) Close() error {
	// Readers first, so that the writer is the last connection and
	// checkpoints the WAL into the main file.
	return errors.Join(s.r.Close(), s.w.Close())
}

// Ping reports whether the database is reachable for both reading and
// writing. It is safe for concurrent use; ctx bounds the wait.
func (s *SQLite) Ping(ctx context.Context) error {
	if err := s.w.PingContext(ctx); err != nil {
		return fmt.Errorf("store: ping writer: %w", err)
	}
	var v int
	if err := s.r.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("store: ping reader: %w", err)
	}
	return nil
}

// nullTime is the stored form of an optional time: NULL for the zero time.
// The caller has validated t.
func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	n, _ := toNanos(t)
	return sql.NullInt64{Int64: n, Valid: true}
}

// isConstraint reports whether err is an SQLite constraint violation with
// the given extended result code.
func isConstraint(err error, code int) bool {
	var se *sqlite.Error
	return errors.As(err, &se) && se.Code() == code
}

var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// toNanos converts t to its stored form, nanoseconds since the Unix epoch.
// It fails for the zero time and for times outside the int64 range
// (before 1677-09-21 or after 2262-04-11).
func toNanos(t time.Time) (int64, error) {
	if t.IsZero() {
		return 0, errors.New("zero time")
	}
	if t.Before(minTime) || t.After(maxTime) {
		return 0, fmt.Errorf("time %s out of storable range", t.UTC().Format(time.RFC3339))
	}
	return t.UnixNano(), nil
}

// fromNanos is the inverse of toNanos; the result is in UTC.
func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
