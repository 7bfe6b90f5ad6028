package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"hsmkms/hsm/p11"
	"hsmkms/httpapi"
	"hsmkms/kms"
	"hsmkms/store"
)

// config is kmsd's validated configuration.
type config struct {
	addr           string
	allowPlainHTTP bool
	httpServer     string // deprecated listen.http_server as given ("" when unset); ignored
	gcHeapFloor    uint64 // 0: GOGC untouched
	tlsCert        string
	tlsKey         string
	clientCA       string
	module         string
	tokenLabel     string // "" when tokenURI selects the token
	tokenURI       string
	initArgs       string // never logged
	pin            string // never logged
	dataDir        string
	pgDSN          string // PostgreSQL store when not empty; never logged (may hold a password)
	pgMaxConns     int
	pgStaleAfter   time.Duration
	pgResync       time.Duration
	pgVerifyCA     bool // accept sslmode=verify-ca off loopback
	sessions       int
	acquireTimeout time.Duration
	ivMode         string
	workingCopies  bool
	copyCheck      time.Duration
	auditFile      string        // "" when auditing is disabled
	nodeID         string        // names this node's trail and its anchor in the store
	cpLines        uint64        // a signed checkpoint every cpLines lines...
	cpInterval     time.Duration // ...or every cpInterval
	maxBody        int64
	readHeader     time.Duration
	readTimeout    time.Duration
	writeTimeout   time.Duration
	idleTimeout    time.Duration
	requestTimeout time.Duration
	maxConcurrent  int
	maxConns       int // 0: no limit
	maxConnsPerIP  int // 0: no limit
	refusalAudit   time.Duration
	ratePerCred    float64
	burstPerCred   int
	keyLimit       int
	usageLimit     uint64
	region         string // kms.Config.Region: GetRegions, resource names
	logLevel       slog.Level
	// Authentication (README "Authentication rules").
	requireSignedAction bool
	allowedHosts        []string
	tc3Services         []string
	// The AWS KMS API (README "The AWS KMS API").
	awsRegions   []string
	awsAccountID string
}

// parseConfig reads the configuration file (if any), the environment and
// the flags, and validates the result before anything is opened.
func parseConfig(args []string, env func(string) (string, bool), stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("kmsd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	finish, err := configFlags(fs, args, env)
	if err != nil {
		return config{}, err
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return finish()
}

// configFileArg finds -config FILE (or KMSD_CONFIG) before the flags are
// defined, because the file provides their defaults.
func configFileArg(args []string, env func(string) (string, bool)) string {
	for i, a := range args {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "config" {
			continue
		}
		if hasVal {
			return val
		}
		if i+1 < len(args) {
			return args[i+1]
		}
	}
	v, _ := env("KMSD_CONFIG")
	return v
}

// configFlags registers the server's flags on fs, with defaults taken from
// the environment, then the configuration file, then built-in values; the
// returned function validates everything once fs is parsed.
func configFlags(fs *flag.FlagSet, args []string, env func(string) (string, bool)) (func() (config, error), error) {
	var fc fileConfig
	if path := configFileArg(args, env); path != "" {
		var err error
		if fc, err = loadConfigFile(path); err != nil {
			return nil, err
		}
	}
	str := func(v string) string { return v }
	num := func(v int64) string {
		if v == 0 {
			return ""
		}
		return strconv.FormatInt(v, 10)
	}
	unsigned := func(v uint64) string {
		if v == 0 {
			return ""
		}
		return strconv.FormatUint(v, 10)
	}
	float := func(v float64) string {
		if v == 0 {
			return ""
		}
		return strconv.FormatFloat(v, 'f', -1, 64)
	}
	dur := func(d duration) string {
		if d == 0 {
			return ""
		}
		return time.Duration(d).String()
	}
	boolean := func(b bool) string {
		if !b {
			return ""
		}
		return "true"
	}
	vals := map[string]*string{}
	def := func(flagName, envName, fileVal, builtin, usage string) {
		v := builtin
		if fileVal != "" {
			v = fileVal
		}
		if e, ok := env(envName); ok && e != "" {
			v = e
		}
		vals[flagName] = fs.String(flagName, v, usage+" (env "+envName+")")
	}
	fs.String("config", "", "configuration file (env KMSD_CONFIG); see kmsd.example.yaml")
	def("addr", "KMSD_ADDR", str(fc.Listen.Address), "127.0.0.1:8080", "listen address")
	def("allow-plain-http", "KMSD_ALLOW_PLAIN_HTTP", boolean(fc.Listen.AllowPlainHTTP), "false", "serve plain HTTP on a non-loopback address")
	def("http-server", "KMSD_HTTP_SERVER", str(fc.Listen.HTTPServer), "", "deprecated and ignored: the API listener is always served by Go's net/http (h1 and stdlib are accepted)")
	def("tls-cert", "KMSD_TLS_CERT_FILE", str(fc.TLS.CertFile), "", "TLS certificate chain (PEM); enables HTTPS")
	def("tls-key", "KMSD_TLS_KEY_FILE", str(fc.TLS.KeyFile), "", "TLS private key (PEM)")
	def("tls-client-ca", "KMSD_TLS_CLIENT_CA_FILE", str(fc.TLS.ClientCAFile), "", "CA certificates (PEM) clients must present a certificate from (mTLS)")
	def("module", "KMSD_PKCS11_MODULE", str(fc.PKCS11.Module), "", "path of the PKCS#11 module")
	def("token-label", "KMSD_TOKEN_LABEL", str(fc.PKCS11.TokenLabel), "", "label of the token holding the CMKs (default hsmkms)")
	def("token-uri", "KMSD_TOKEN_URI", str(fc.PKCS11.TokenURI), "", "the token as an RFC 7512 URI (token, manufacturer, model, serial), e.g. pkcs11:token=hsmkms;serial=0a1b")
	def("init-args", "KMSD_PKCS11_INIT_ARGS", str(fc.PKCS11.InitArgs), "", "library parameters passed to C_Initialize (pReserved); NSS softoken needs configdir='sql:DIR' ...")
	def("pin-file", "KMSD_PIN_FILE", str(fc.PKCS11.PINFile), "", "file holding the token user PIN; or set KMSD_PIN")
	def("sessions", "KMSD_SESSIONS", num(int64(fc.PKCS11.Sessions)), "2", "PKCS#11 sessions, i.e. concurrent HSM calls")
	def("acquire-timeout", "KMSD_ACQUIRE_TIMEOUT", dur(fc.PKCS11.AcquireTimeout), "5s", "longest wait for a free PKCS#11 session")
	wc := ""
	if fc.PKCS11.WorkingCopies != nil {
		wc = strconv.FormatBool(*fc.PKCS11.WorkingCopies)
	}
	def("working-copies", "KMSD_WORKING_COPIES", wc, "true", "use per-session copies of CMKs (session objects) where the token allows it")
	def("copy-check-interval", "KMSD_COPY_CHECK_INTERVAL", dur(fc.PKCS11.CopyCheckInterval), p11.DefaultCopyCheckInterval.String(), "how often a working copy's token object is checked to still exist")
	def("iv-mode", "KMSD_IV_MODE", str(fc.PKCS11.IVMode), "caller", "GCM IVs made by kmsd (caller) or by the HSM (hsm)")
	def("data-dir", "KMSD_DATA_DIR", str(fc.Store.DataDir), "var", "directory of the metadata store")
	def("postgres-dsn-file", "KMSD_POSTGRES_DSN_FILE", str(fc.Store.Postgres.DSNFile), "", "file holding the DSN of a PostgreSQL store shared by several nodes (replaces the SQLite store)")
	def("postgres-max-conns", "KMSD_POSTGRES_MAX_CONNS", num(int64(fc.Store.Postgres.MaxConns)), "10", "PostgreSQL connection pool size")
	def("postgres-stale-after", "KMSD_POSTGRES_STALE_AFTER", dur(fc.Store.Postgres.StaleAfter), kms.DefaultStaleAfter.String(), "how long Encrypt/Decrypt serve from cache while PostgreSQL is unreachable")
	def("postgres-resync-interval", "KMSD_POSTGRES_RESYNC_INTERVAL", dur(fc.Store.Postgres.ResyncInterval), kms.DefaultResyncInterval.String(), "full cache re-read interval (fallback when change notifications are lost)")
	def("postgres-allow-verify-ca", "KMSD_POSTGRES_ALLOW_VERIFY_CA", boolean(fc.Store.Postgres.AllowVerifyCA), "false", "accept sslmode=verify-ca (no host name check) for a PostgreSQL server off this machine; otherwise verify-full is required")
	def("audit-file", "KMSD_AUDIT_FILE", str(fc.Audit.File), "", "audit trail file (default DATA_DIR/audit.log)")
	def("audit-disabled", "KMSD_AUDIT_DISABLED", boolean(fc.Audit.Disabled), "false", "do not keep an audit trail")
	def("node-id", "KMSD_NODE_ID", str(fc.Audit.NodeID), "", "id of this node's audit trail and of its anchor in the store (default HOSTNAME:AUDIT_FILE)")
	def("audit-checkpoint-lines", "KMSD_AUDIT_CHECKPOINT_LINES", num(fc.Audit.CheckpointLines), "1000", "a checkpoint signed in the HSM every this many audit lines")
	def("audit-checkpoint-interval", "KMSD_AUDIT_CHECKPOINT_INTERVAL", dur(fc.Audit.CheckpointInterval), "10s", "... or this often, if lines were written")
	def("max-body-bytes", "KMSD_MAX_BODY_BYTES", num(fc.Limits.MaxBodyBytes), "65536", "largest request body")
	def("read-header-timeout", "KMSD_READ_HEADER_TIMEOUT", dur(fc.Limits.ReadHeaderTimeout), "5s", "time to read request headers")
	def("read-timeout", "KMSD_READ_TIMEOUT", dur(fc.Limits.ReadTimeout), "15s", "time to read a whole request")
	def("write-timeout", "KMSD_WRITE_TIMEOUT", dur(fc.Limits.WriteTimeout), "30s", "time to write a response")
	def("idle-timeout", "KMSD_IDLE_TIMEOUT", dur(fc.Limits.IdleTimeout), "120s", "keep-alive idle time")
	def("request-timeout", "KMSD_REQUEST_TIMEOUT", dur(fc.Limits.RequestTimeout), "10s", "longest time spent serving one request")
	def("max-concurrent", "KMSD_MAX_CONCURRENT", num(int64(fc.Limits.MaxConcurrentRequests)), "1024", "requests served at once; more are refused at once")
	optInt := func(p *int, builtin int) string {
		if p == nil {
			return strconv.Itoa(builtin)
		}
		return strconv.Itoa(*p)
	}
	def("max-connections", "KMSD_MAX_CONNECTIONS", optInt(fc.Limits.MaxConnections, httpapi.DefaultMaxConnections), "", "connections open at once on the API listener, 0 for no limit; more are closed when accepted")
	def("max-connections-per-address", "KMSD_MAX_CONNECTIONS_PER_ADDRESS", optInt(fc.Limits.MaxConnectionsPerAddress, httpapi.DefaultMaxConnectionsPerAddress), "", "connections open at once from one client IP address, 0 for no limit")
	def("refusal-audit-interval", "KMSD_REFUSAL_AUDIT_INTERVAL", dur(fc.Audit.RefusalInterval), httpapi.DefaultRefusalAuditInterval.String(), "refused requests and connections are written to the audit trail as one summary line per protocol, code and client address per interval")
	def("rate-per-credential", "KMSD_RATE_PER_CREDENTIAL", float(fc.Limits.RatePerCredential), "0", "requests per second per SecretId, 0 for no limit")
	def("burst-per-credential", "KMSD_BURST_PER_CREDENTIAL", num(int64(fc.Limits.BurstPerCredential)), "0", "burst above the rate (default: one second's worth)")
	def("key-limit", "KMSD_KEY_LIMIT", num(int64(fc.Keys.Limit)), strconv.Itoa(kms.DefaultKeyLimit), "maximum number of CMKs")
	def("region", "KMSD_REGION", str(fc.Keys.Region), kms.DefaultRegion, "the region kmsd reports (GetRegions) and names in resource names qcs::kms:<region>:uin/0:key/<keyId>")
	def("usage-limit", "KMSD_USAGE_LIMIT", unsigned(fc.Keys.UsageLimitPerVersion), "1073741824", "encryptions per key version before it is rotated")
	def("log-level", "KMSD_LOG_LEVEL", str(fc.Log.Level), "info", "debug, info, warn or error")
	floor := ""
	if fc.Runtime.GCHeapFloorBytes != nil {
		floor = strconv.FormatInt(*fc.Runtime.GCHeapFloorBytes, 10)
	}
	def("gc-heap-floor", "KMSD_GC_HEAP_FLOOR", floor, strconv.Itoa(defaultGCHeapFloor), "heap size (bytes) below which the garbage collector does not run; 0 leaves GOGC alone (so does a GOGC environment variable)")
	def("require-signed-action", "KMSD_REQUIRE_SIGNED_ACTION", boolean(fc.Auth.RequireSignedAction), "false", "refuse TC3 requests that do not sign x-tc-action (the official SDKs do not)")
	def("allowed-hosts", "KMSD_ALLOWED_HOSTS", strings.Join(fc.Auth.AllowedHosts, ","), "", "comma-separated host names a request's Host may name (empty: any)")
	def("tc3-services", "KMSD_TC3_SERVICES", strings.Join(fc.Auth.TC3Services, ","), "", "comma-separated services a TC3 credential scope may name (empty: kms, and the Node.js SDK's service for an IP or dotless endpoint)")
	def("aws-regions", "KMSD_AWS_REGIONS", strings.Join(fc.AWS.Regions, ","), "", "comma-separated regions an AWS SigV4 credential scope may name; empty disables the AWS KMS API")
	def("aws-account-id", "KMSD_AWS_ACCOUNT_ID", fc.AWS.AccountID, httpapi.DefaultAWSAccountID, "the 12-digit account of the AWS KMS API's ARNs")
	pinEnv := fc.PKCS11.PINEnv
	if pinEnv == "" {
		pinEnv = "KMSD_PIN"
	}

	return func() (config, error) {
		var errs []error
		bad := func(name, format string, a ...any) {
			errs = append(errs, fmt.Errorf("-%s: %s", name, fmt.Sprintf(format, a...)))
		}
		v := func(name string) string { return *vals[name] }
		parseBool := func(name string) bool {
			b, err := strconv.ParseBool(v(name))
			if err != nil {
				bad(name, "%q is not true or false", v(name))
			}
			return b
		}
		parseDur := func(name string) time.Duration {
			d, err := time.ParseDuration(v(name))
			if err != nil || d <= 0 {
				bad(name, "%q is not a positive duration like 5s", v(name))
			}
			return d
		}
		parseInt := func(name string, min, max int64) int64 {
			n, err := strconv.ParseInt(v(name), 10, 64)
			if err != nil || n < min || n > max {
				bad(name, "%q: want an integer in %d..%d", v(name), min, max)
			}
			return n
		}
		c := config{addr: v("addr"), module: v("module"), dataDir: v("data-dir"), tlsCert: v("tls-cert"), tlsKey: v("tls-key"), clientCA: v("tls-client-ca")}
		c.allowPlainHTTP = parseBool("allow-plain-http")
		c.httpServer = v("http-server")
		if c.httpServer != "" && c.httpServer != "h1" && c.httpServer != "stdlib" {
			bad("http-server", "%q: want h1 or stdlib (deprecated: both mean net/http)", c.httpServer)
		}
		if _, _, err := net.SplitHostPort(c.addr); err != nil {
			bad("addr", "%q: %v", c.addr, err)
		}
		if (c.tlsCert == "") != (c.tlsKey == "") {
			errs = append(errs, errors.New("-tls-cert and -tls-key go together"))
		}
		if c.clientCA != "" && c.tlsCert == "" {
			errs = append(errs, errors.New("-tls-client-ca (mTLS) needs -tls-cert and -tls-key"))
		}
		for _, f := range []struct{ name, path string }{{"tls-cert", c.tlsCert}, {"tls-key", c.tlsKey}, {"tls-client-ca", c.clientCA}} {
			if f.path != "" {
				if _, err := os.Stat(f.path); err != nil {
					bad(f.name, "%v", err)
				}
			}
		}
		if c.tlsCert == "" && !isLoopback(c.addr) && !c.allowPlainHTTP {
			errs = append(errs, fmt.Errorf("-addr %s is not a loopback address: configure TLS (-tls-cert/-tls-key), or set -allow-plain-http if a TLS proxy in front of kmsd terminates it", c.addr))
		}
		if c.module == "" {
			errs = append(errs, errors.New("-module (KMSD_PKCS11_MODULE) is required: the path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so"))
		} else if st, err := os.Stat(c.module); err != nil || st.IsDir() {
			bad("module", "%q is not a readable file", c.module)
		}
		label, uri := v("token-label"), v("token-uri")
		switch {
		case label != "" && uri != "":
			errs = append(errs, errors.New("give -token-label or -token-uri, not both"))
		case uri != "":
			if _, err := p11.ParseTokenURI(uri); err != nil {
				errs = append(errs, err)
			}
			c.tokenURI = uri
			label = ""
		case label == "":
			label = "hsmkms"
		}
		c.tokenLabel = label
		c.initArgs = v("init-args")
		if c.dataDir == "" {
			errs = append(errs, errors.New("-data-dir must not be empty"))
		}
		if f := v("postgres-dsn-file"); f != "" {
			b, err := os.ReadFile(f)
			switch {
			case err != nil:
				bad("postgres-dsn-file", "%v", err)
			case strings.TrimSpace(string(b)) == "":
				bad("postgres-dsn-file", "%q is empty", f)
			default:
				c.pgDSN = strings.TrimSpace(string(b))
			}
		}
		c.pgVerifyCA = parseBool("postgres-allow-verify-ca")
		if c.pgDSN != "" {
			if err := store.CheckPostgresTransport(c.pgDSN, c.pgVerifyCA); err != nil {
				bad("postgres-dsn-file", "%v", err)
			}
		}
		c.pgMaxConns = int(parseInt("postgres-max-conns", 2, 1000))
		c.pgStaleAfter = parseDur("postgres-stale-after")
		c.pgResync = parseDur("postgres-resync-interval")
		c.sessions = int(parseInt("sessions", 1, 1024))
		c.acquireTimeout = parseDur("acquire-timeout")
		c.ivMode = v("iv-mode")
		c.workingCopies = parseBool("working-copies")
		c.copyCheck = parseDur("copy-check-interval")
		if c.ivMode != "caller" && c.ivMode != "hsm" {
			bad("iv-mode", "%q: want caller or hsm", c.ivMode)
		}
		if !parseBool("audit-disabled") {
			c.auditFile = v("audit-file")
			if c.auditFile == "" {
				c.auditFile = filepath.Join(c.dataDir, "audit.log")
			}
			c.nodeID = v("node-id")
			if c.nodeID == "" {
				host, _ := os.Hostname()
				abs, _ := filepath.Abs(c.auditFile)
				c.nodeID = host + ":" + abs
			}
		}
		c.cpLines = uint64(parseInt("audit-checkpoint-lines", 1, 1<<40))
		c.cpInterval = parseDur("audit-checkpoint-interval")
		c.maxBody = parseInt("max-body-bytes", 1024, 64<<20)
		c.readHeader = parseDur("read-header-timeout")
		c.readTimeout = parseDur("read-timeout")
		c.writeTimeout = parseDur("write-timeout")
		c.idleTimeout = parseDur("idle-timeout")
		c.requestTimeout = parseDur("request-timeout")
		c.maxConcurrent = int(parseInt("max-concurrent", 1, 1<<20))
		c.maxConns = int(parseInt("max-connections", 0, 1<<24))
		c.maxConnsPerIP = int(parseInt("max-connections-per-address", 0, 1<<24))
		c.refusalAudit = parseDur("refusal-audit-interval")
		c.gcHeapFloor = uint64(parseInt("gc-heap-floor", 0, 1<<40))
		rate, err := strconv.ParseFloat(v("rate-per-credential"), 64)
		if err != nil || rate < 0 {
			bad("rate-per-credential", "%q: want a number >= 0", v("rate-per-credential"))
		}
		c.ratePerCred = rate
		c.burstPerCred = int(parseInt("burst-per-credential", 0, 1<<30))
		c.keyLimit = int(parseInt("key-limit", 1, 1<<31-1))
		c.region = v("region")
		if !validRegion(c.region) {
			bad("region", "%q: want 1-32 of a-z 0-9 -", c.region)
		}
		ul, err := strconv.ParseUint(v("usage-limit"), 10, 64)
		if err != nil || ul < 1 || ul > 1<<32 {
			bad("usage-limit", "%q: want an integer in 1..2^32 (NIST SP 800-38D bound for random IVs)", v("usage-limit"))
		}
		c.usageLimit = ul
		if err := c.logLevel.UnmarshalText([]byte(v("log-level"))); err != nil {
			bad("log-level", "%q: %v", v("log-level"), err)
		}
		c.requireSignedAction = parseBool("require-signed-action")
		list := func(name string) []string {
			var out []string
			for _, e := range strings.Split(v(name), ",") {
				if e = strings.TrimSpace(e); e != "" {
					if strings.ContainsAny(e, " /:@") {
						bad(name, "%q is not a bare name", e)
					}
					out = append(out, e)
				}
			}
			return out
		}
		c.allowedHosts, c.tc3Services = list("allowed-hosts"), list("tc3-services")
		c.awsRegions, c.awsAccountID = list("aws-regions"), v("aws-account-id")
		for _, r := range c.awsRegions {
			if len(r) > 32 || strings.Trim(r, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
				bad("aws-regions", "%q is not a region name (lower-case letters, digits and -)", r)
			}
		}
		if len(c.awsAccountID) != 12 || strings.Trim(c.awsAccountID, "0123456789") != "" {
			bad("aws-account-id", "%q is not 12 digits", c.awsAccountID)
		}
		pin, pinErr := readPIN(v("pin-file"), pinEnv, env)
		if pinErr != nil {
			errs = append(errs, pinErr)
		}
		c.pin = pin
		return c, errors.Join(errs...)
	}, nil
}

// validRegion reports whether r is a region name: 1-32 of a-z 0-9 -.
func validRegion(r string) bool {
	if r == "" || len(r) > 32 {
		return false
	}
	for i := 0; i < len(r); i++ {
		if c := r[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
