// Package pgtest gives tests a real, throwaway PostgreSQL server: a fresh
// cluster made with initdb in a temporary directory, listening on a free
// loopback port with its Unix socket in that directory, and removed when the
// test (or, for Shared, the test binary) ends. Tests then make one empty
// database each with NewDatabase.
//
// When KMS_TEST_POSTGRES_DSN is set it names an existing server instead (a
// DSN whose role may CREATE DATABASE); nothing is started and each
// NewDatabase makes and drops a database there.
//
// # Binaries
//
// The server binaries (initdb, postgres) are taken from KMS_TEST_POSTGRES_BIN
// if set, else from the newest /usr/lib/postgresql/*/bin (Debian's
// postgresql package, which scripts/setup.sh installs), else from PATH. If
// none is found and KMS_TEST_POSTGRES_DSN is unset, the test FAILS with
// instructions: tests never skip silently.
//
// # Running as root
//
// postgres refuses to run as root. When the tests run as root, initdb and
// postgres run as the "postgres" system user (made by Debian's package), or
// "nobody" if there is none: the harness sets the child's credentials itself
// (SysProcAttr.Credential), so neither sudo, su, runuser nor setpriv is
// needed, and makes the cluster directory reachable by that user.
//
// # TLS
//
// A throwaway server speaks TLS only (pg_hba.conf rejects other TCP
// clients), with a certificate for 127.0.0.1 signed by a throwaway CA made
// with crypto/x509 (tls.go); AdminDSN and NewDatabase's DSNs use
// sslmode=verify-full with that CA (CAFile), as kmsd requires off loopback.
//
// The server is started with fsync off (it is thrown away) and is sent
// SIGQUIT if the test process dies (Linux parent-death signal), so a crashed
// test run leaves no server behind.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvDSN names an existing server to use instead of a throwaway one.
const EnvDSN = "KMS_TEST_POSTGRES_DSN"

// EnvBin names the directory holding initdb and postgres.
const EnvBin = "KMS_TEST_POSTGRES_BIN"

// Instructions is what a test failure says when no server can be had.
const Instructions = `PostgreSQL is needed by these tests and could not be started.
Install the server (Debian: scripts/setup.sh, or apt-get install postgresql),
or set ` + EnvBin + ` to the directory holding initdb and postgres,
or set ` + EnvDSN + ` to a server where the tests may create databases
(e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable).`

// Server is a PostgreSQL server for tests.
type Server struct {
	// AdminDSN connects as a superuser (or a role that may create
	// databases) to the server's maintenance database.
	AdminDSN string
	// CAFile is the certificate authority of a throwaway server's TLS
	// certificate ("" for an external server).
	CAFile string

	mu      sync.Mutex
	cmd     *exec.Cmd // nil for an external server or while stopped
	done    chan struct{}
	bin     string
	dir     string // cluster base directory; "" for an external server
	port    int
	cred    *syscall.Credential
	logFile string
}

// Start returns a server for tb: a throwaway cluster stopped and removed
// when tb ends, or the KMS_TEST_POSTGRES_DSN server. It fails tb (with
// Instructions) if neither can be had.
func Start(tb testing.TB) *Server {
	tb.Helper()
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return &Server{AdminDSN: dsn}
	}
	s, err := startCluster()
	if err != nil {
		tb.Fatalf("pgtest: %v\n\n%s", err, Instructions)
	}
	tb.Cleanup(s.remove)
	return s
}

var shared struct {
	mu  sync.Mutex
	s   *Server
	err error
}

// Shared returns one server for the whole test binary, started on first
// use; Main stops it. It fails tb (with Instructions) if none can be had.
func Shared(tb testing.TB) *Server {
	tb.Helper()
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return &Server{AdminDSN: dsn}
	}
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.s == nil && shared.err == nil {
		shared.s, shared.err = startCluster()
	}
	if shared.err != nil {
		tb.Fatalf("pgtest: %v\n\n%s", shared.err, Instructions)
	}
	return shared.s
}

// Main runs the tests and then stops the Shared server, if one was
// started: func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	shared.mu.Lock()
	if shared.s != nil {
		shared.s.remove()
	}
	shared.mu.Unlock()
	return code
}

// NewDatabase creates an empty database on s, dropped when tb ends, and
// returns a DSN connecting to it.
func (s *Server) NewDatabase(tb testing.TB) string {
	tb.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "hsmkms_test_" + hex.EncodeToString(b[:])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.admin(ctx, `CREATE DATABASE `+name); err != nil {
		tb.Fatalf("pgtest: create database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.admin(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil && s.running() {
			tb.Logf("pgtest: drop database %s: %v", name, err)
		}
	})
	return withDatabase(s.AdminDSN, name)
}

func (s *Server) admin(ctx context.Context, sql string) error {
	c, err := pgx.Connect(ctx, s.AdminDSN)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	_, err = c.Exec(ctx, sql)
	return err
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(dsn, name string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err == nil {
			u.Path = "/" + name
			return u.String()
		}
	}
	return dsn + " dbname=" + name // keyword form: the last setting wins
}

func (s *Server) running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dir == "" || s.cmd != nil
}

// Stop shuts a throwaway server down (fast shutdown) and keeps its data,
// so Restart can bring it back: tests of database outages use it. It fails
// tb for an external server.
func (s *Server) Stop(tb testing.TB) {
	tb.Helper()
	if s.dir == "" {
		tb.Fatalf("pgtest: cannot stop the external server %s", EnvDSN)
	}
	s.stop()
}

// Restart starts a stopped throwaway server again on the same port.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if s.dir == "" {
		tb.Fatalf("pgtest: cannot restart the external server %s", EnvDSN)
	}
	if err := s.startPostgres(); err != nil {
		tb.Fatalf("pgtest: restart: %v", err)
	}
}

// findBin returns the directory holding initdb and postgres.
func findBin() (string, error) {
	if d := os.Getenv(EnvBin); d != "" {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			return "", fmt.Errorf("%s=%s: %v", EnvBin, d, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { // newest major version first
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		d := strings.TrimSpace(string(out))
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", errors.New("PostgreSQL server binaries (initdb, postgres) not found")
}

// runAs returns the credentials the server must run with: nil unless we
// are root, in which case those of the postgres (or nobody) system user.
func runAs() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err1 != nil || err2 != nil || uid == 0 {
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
	}
	return nil, errors.New("running as root, and neither a postgres nor a nobody user exists to run the server as (postgres refuses root)")
}

func startCluster() (_ *Server, err error) {
	bin, err := findBin()
	if err != nil {
		return nil, err
	}
	cred, err := runAs()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "hsmkms-pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, dir: dir, cred: cred, logFile: filepath.Join(dir, "postgres.log")}
	defer func() {
		if err != nil {
			s.remove()
		}
	}()
	data, sock := filepath.Join(dir, "data"), filepath.Join(dir, "sock")
	for _, d := range []string{data, sock} {
		if err := os.Mkdir(d, 0o700); err != nil {
			return nil, err
		}
	}
	if cred != nil {
		// The server user must reach its directories; only they are its.
		if err := os.Chmod(dir, 0o711); err != nil {
			return nil, err
		}
		for _, p := range []string{data, sock} {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return nil, err
			}
		}
		f, err := os.OpenFile(s.logFile, os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			return nil, err
		}
		f.Close()
		if err := os.Chown(s.logFile, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	initdb := exec.Command(filepath.Join(bin, "initdb"), "-D", data, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = dir
	initdb.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := initdb.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("initdb: %v\n%s", err, out)
	}
	if s.CAFile, err = makeCerts(dir, cred); err != nil {
		return nil, fmt.Errorf("pgtest: certificates: %w", err)
	}
	if err := os.WriteFile(filepath.Join(data, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return nil, err
	}
	if cred != nil {
		if err := os.Chown(filepath.Join(data, "pg_hba.conf"), int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, err
		}
	}
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		s.port = port
		s.AdminDSN = fmt.Sprintf("postgres://postgres@%s:%d/postgres?sslmode=verify-full&sslrootcert=%s",
			Host, port, url.QueryEscape(s.CAFile))
		err = s.startPostgres()
		if err == nil {
			return s, nil
		}
		if attempt == 2 { // a port taken between freePort and bind: retry
			return nil, err
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startPostgres starts the server on s.port and waits until it accepts
// connections.
func (s *Server) startPostgres() error {
	log, err := os.OpenFile(s.logFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(filepath.Join(s.bin, "postgres"),
		"-D", filepath.Join(s.dir, "data"), "-p", strconv.Itoa(s.port), "-k", filepath.Join(s.dir, "sock"),
		"-c", "listen_addresses="+Host, "-c", "fsync=off", "-c", "full_page_writes=off",
		"-c", "ssl=on", "-c", "ssl_cert_file="+filepath.Join(s.dir, "server.crt"),
		"-c", "ssl_key_file="+filepath.Join(s.dir, "server.key"),
		"-c", "max_connections=400", "-c", "shared_buffers=64MB", "-c", "log_min_messages=warning")
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGQUIT}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := pgx.Connect(ctx, s.AdminDSN)
		cancel()
		if err == nil {
			c.Close(context.Background())
			break
		}
		select {
		case <-done:
			return fmt.Errorf("postgres exited at start:\n%s", s.logTail())
		default:
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("postgres did not accept connections within 30s: %v\n%s", err, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.mu.Lock()
	s.cmd, s.done = cmd, done
	s.mu.Unlock()
	return nil
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logFile)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// stop shuts the server down: fast shutdown, then SIGKILL after 15 s.
func (s *Server) stop() {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// remove stops the server and deletes its directory.
func (s *Server) remove() {
	if s.dir == "" {
		return
	}
	s.stop()
	_ = os.RemoveAll(s.dir)
}

// StartServer is Start for programs that are not tests (the benchmark): a
// throwaway cluster, or the KMS_TEST_POSTGRES_DSN server. The caller calls
// Remove when done.
func StartServer() (*Server, error) {
	if dsn := os.Getenv(EnvDSN); dsn != "" {
		return &Server{AdminDSN: dsn}, nil
	}
	s, err := startCluster()
	if err != nil {
		return nil, fmt.Errorf("pgtest: %v\n\n%s", err, Instructions)
	}
	return s, nil
}

// Remove stops a server made by StartServer and deletes its cluster (an
// external server is left alone).
func (s *Server) Remove() { s.remove() }

// CreateDatabase creates an empty database named name and returns a DSN
// connecting to it; the caller drops it (or removes the server).
func (s *Server) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := s.admin(ctx, `CREATE DATABASE `+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("pgtest: create database: %w", err)
	}
	return withDatabase(s.AdminDSN, name), nil
}
