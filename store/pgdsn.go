package store

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// keywordSSLMode finds sslmode in a keyword/value DSN.
var keywordSSLMode = regexp.MustCompile(`(?:^|\s)sslmode\s*=\s*'?([A-Za-z-]+)`)

// CheckPostgresTransport refuses a DSN that would let someone on the
// network read or change the metadata: unless every host it names is on
// this machine (a Unix socket, localhost or a loopback address), it must
// use sslmode=verify-full (TLS, the server's certificate checked against
// the trusted CAs and its host name), or sslmode=verify-ca (no host name
// check) if allowVerifyCA. pgx's default, prefer, and require do not
// authenticate the server. The sslmode is the DSN's, else PGSSLMODE's, else
// prefer, as pgx does. The error names the hosts and the mode, never the
// password.
func CheckPostgresTransport(dsn string, allowVerifyCA bool) error {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("store: PostgreSQL DSN: %w", err)
	}
	hosts := []string{cfg.Host}
	tlsOn := cfg.TLSConfig != nil
	for _, f := range cfg.Fallbacks {
		hosts = append(hosts, f.Host)
		tlsOn = tlsOn && f.TLSConfig != nil
	}
	var remote []string
	for _, h := range hosts {
		if !localHost(h) {
			remote = append(remote, h)
		}
	}
	if len(remote) == 0 {
		return nil
	}
	mode := dsnSSLMode(dsn)
	switch {
	case mode == "verify-full" && tlsOn:
		return nil
	case mode == "verify-ca" && tlsOn && allowVerifyCA:
		return nil
	case mode == "verify-ca" && tlsOn:
		return fmt.Errorf("store: PostgreSQL host %s is not on this machine and the DSN's sslmode=verify-ca does not check the server's host name: use sslmode=verify-full, or set store.postgres.allow_verify_ca (KMSD_POSTGRES_ALLOW_VERIFY_CA=true) to accept verify-ca",
			strings.Join(remote, ","))
	}
	return fmt.Errorf("store: PostgreSQL host %s is not on this machine and the DSN's sslmode=%s does not authenticate the server: use sslmode=verify-full (with sslrootcert naming the CA that signed its certificate), or whoever is between kmsd and the database can read and change keys' and credentials' metadata",
		strings.Join(remote, ","), mode)
}

// dsnSSLMode returns the sslmode pgx will use for dsn.
func dsnSSLMode(dsn string) string {
	mode := ""
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			mode = u.Query().Get("sslmode")
		}
	} else if m := keywordSSLMode.FindStringSubmatch(dsn); m != nil {
		mode = m[1]
	}
	if mode == "" {
		mode = os.Getenv("PGSSLMODE")
	}
	if mode == "" {
		mode = "prefer"
	}
	return mode
}

// localHost reports whether a PostgreSQL host is on this machine.
func localHost(h string) bool {
	if strings.HasPrefix(h, "/") || strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
