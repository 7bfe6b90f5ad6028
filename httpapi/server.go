// Package httpapi is the HTTP edge of hsmkms: the Tencent Cloud KMS
// compatible wire protocols served with Echo. It validates and decodes
// input, calls the domain (package kms) and maps domain errors to wire
// codes. It never touches PKCS#11 and holds no key material.
//
// Protocols:
//   - the AWS KMS API (aws.go): POST / with X-Amz-Target:
//     TrentService.<Action>, AWS Signature Version 4, awsJson1.1 replies;
//   - the legacy API ("API 2.0"): GET or POST /v2/index.php with an Action
//     parameter, lowerCamel business parameters, HmacSHA1/HmacSHA256
//     signatures with Nonce replay protection, and a JSON reply
//     {"code":0,"message":"","requestId":"..."} always with HTTP 200;
//   - API 3.0 (version 2019-01-18) at /: TC3-HMAC-SHA256 with X-TC-*
//     headers and a JSON body (or a query for GET), or signature v1 with
//     everything in the query or a form body; replies
//     {"Response":{...,"RequestId":"..."}} with HTTP 200.
//
// Every request is authenticated (see auth.go); the caller is handed to the
// domain with kms.WithPrincipal, and the domain authorises each action.
package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"hash/maphash"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"hsmkms/kms"
	"hsmkms/tcsign"
)

// KMS is the part of the domain service the HTTP edge calls. *kms.Service
// implements it. Implementations must be safe for concurrent use.
type KMS interface {
	Credentials
	CredentialAdmin
	KeyAdmin
	TagAdmin
	CreateKey(ctx context.Context, in kms.CreateKeyInput) (kms.KeyMetadata, error)
	Encrypt(ctx context.Context, in kms.EncryptInput) (kms.EncryptResult, error)
	Decrypt(ctx context.Context, in kms.DecryptInput) (kms.DecryptResult, error)
}

// Config tunes the HTTP edge. The zero value is usable.
type Config struct {
	// Logger receives errors that are not the caller's fault (never
	// request parameters); nil means slog.Default().
	Logger *slog.Logger
	// RequestTimeout bounds the work done for one request, HSM wait
	// included; 0 means 10 s.
	RequestTimeout time.Duration
	// MaxBodyBytes caps a request body; 0 means 64 KiB.
	MaxBodyBytes int64
	// Clock returns the current time (signature windows); nil means time.Now.
	Clock func() time.Time
	// MaxNonces bounds each in-memory replay cache: the signature v1
	// nonces (unless Nonces is set) and the TC3 signatures accepted with an
	// unsigned action; 0 means 4,000,000 (about 50 bytes each). A full
	// cache refuses new requests (RequestLimitExceeded / 4400).
	MaxNonces int
	// Nonces, when set, remembers the legacy API's nonces instead of the
	// in-memory cache (e.g. a store shared by several nodes).
	Nonces NonceStore
	// MaxConcurrent caps the authenticated API requests served at once
	// (a slot is taken after the body is read and the signature verified,
	// see admission.go); more are refused at once (RequestLimitExceeded /
	// 4400). 0 means 1024.
	MaxConcurrent int
	// RatePerCredential limits each SecretId to this many requests per
	// second (bursts of BurstPerCredential); 0 means no limit.
	RatePerCredential  float64
	BurstPerCredential int
	// Audit, when set, records one line per API request; a request whose
	// line cannot be written fails.
	Audit AuditSink
	// Registry, when set, receives the request metrics and is served at
	// /metrics.
	Registry *prometheus.Registry
	// Ready lists the readiness checks of /readyz by name.
	Ready map[string]func(context.Context) error

	// MaxConnections caps the connections the listener returned by
	// Listener keeps open at once; more are closed when accepted. 0 means
	// DefaultMaxConnections, < 0 no limit.
	MaxConnections int
	// MaxConnectionsPerAddress caps the connections from one client IP
	// address; 0 means DefaultMaxConnectionsPerAddress, < 0 no limit.
	MaxConnectionsPerAddress int
	// RefusalAuditInterval is how often refused requests and connections
	// are written to the audit trail as summary lines (one per protocol,
	// code and client address); 0 means DefaultRefusalAuditInterval.
	RefusalAuditInterval time.Duration
	// ReadyCacheTTL is how long a /readyz result is reused (concurrent
	// calls share one run of the checks); 0 means 1 s.
	ReadyCacheTTL time.Duration
	// RequireSignedAction refuses TC3 requests whose SignedHeaders do not
	// include x-tc-action (the official SDKs' requests among them).
	RequireSignedAction bool
	// AllowedHosts, when not empty, lists the host names (without port,
	// any case) a request's Host may name; others are refused before
	// their signature is checked. Empty means any.
	AllowedHosts []string
	// TC3Services, when not empty, lists the services a TC3 credential
	// scope may name. Empty means "kms" and "tag" (TagService), plus the service the official
	// Node.js SDK derives from an endpoint that is an IP address or a
	// name without a dot (see serviceAllowed).
	TC3Services []string
	// Signatures, when set, shares the TC3 signatures accepted with an
	// unsigned action with the other nodes of a cluster (see
	// SignatureLedger); New then starts a goroutine that Close stops.
	Signatures SignatureLedger
	// SignatureSync is how often signatures are published to and read
	// from Signatures; 0 means DefaultSignatureSync.
	SignatureSync time.Duration
	// AWS configures the AWS KMS API (aws.go); its zero value disables it.
	AWS AWSConfig
	// Degraded, if set, lists by name the conditions under which the node
	// serves but an operator must act (a value of 0 means none): /readyz
	// then answers 200 with status "degraded" and the names. kmsd reports
	// "integrity": the number of stored rows failing their integrity check.
	Degraded func() map[string]int
}

// Defaults of the admission limits.
const (
	DefaultMaxConnections           = 4096
	DefaultMaxConnectionsPerAddress = 256
	DefaultRefusalAuditInterval     = time.Minute
)

// RequestIDHeader carries the request id of every response.
const RequestIDHeader = "X-Request-Id"

// Server serves the KMS API. Create it with New.
type Server struct {
	kms     KMS
	audit   AuditSink
	metrics *metrics
	slots   chan struct{}
	limits  *rateLimiters
	creds   Credentials
	admin   CredentialAdmin
	nonces  NonceStore
	cfg     Config
	log     *slog.Logger
	echo    *echo.Echo
	tc3Keys tcsign.KeyCache // derived TC3 signing keys (auth.go)

	refusals   *refusalLog  // audit summaries of refusals; nil without an audit sink
	connsOpen  atomic.Int64 // connections open on the listeners of Listener
	ready      readyCache   // the last /readyz result (ops.go)
	closeOnce  sync.Once
	sigs       *nonceCache // TC3 signatures accepted with an unsigned action (bind.go)
	actionSeed maphash.Seed
	sigSync    *sigSync // nil unless Config.Signatures is set
	hosts      map[string]bool
	services   map[string]bool
	actions    actionTable // every action served (actions.go)

	awsRegions map[string]bool // Config.AWS.Regions
	awsAccount string
	awsKeys    awsKeyCache // derived SigV4 signing keys (awssign.go)
}

// New returns a Server calling k. It is safe for concurrent use.
func New(k KMS, cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.MaxNonces <= 0 {
		cfg.MaxNonces = 4_000_000
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = 1024
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.MaxConnectionsPerAddress == 0 {
		cfg.MaxConnectionsPerAddress = DefaultMaxConnectionsPerAddress
	}
	if cfg.RefusalAuditInterval <= 0 {
		cfg.RefusalAuditInterval = DefaultRefusalAuditInterval
	}
	if cfg.ReadyCacheTTL <= 0 {
		cfg.ReadyCacheTTL = time.Second
	}
	s := &Server{kms: k, creds: k, admin: k, nonces: cfg.Nonces, cfg: cfg, log: cfg.Logger,
		audit: cfg.Audit, slots: make(chan struct{}, cfg.MaxConcurrent), actions: newActionTable()}
	if cfg.Audit != nil {
		s.refusals = &refusalLog{sink: cfg.Audit, interval: cfg.RefusalAuditInterval, onError: func(err error) {
			cfg.Logger.Error("audit trail unavailable: refusal summary not recorded", "err", err)
		}}
	}
	if s.nonces == nil {
		s.nonces = newNonceCache(cfg.MaxNonces)
	}
	s.sigs, s.actionSeed = newNonceCache(cfg.MaxNonces), maphash.MakeSeed()
	s.hosts, s.services = set(cfg.AllowedHosts, true), set(cfg.TC3Services, false)
	s.awsRegions, s.awsAccount = awsRegionSet(cfg.AWS.Regions), cfg.AWS.AccountID
	if s.awsAccount == "" {
		s.awsAccount = DefaultAWSAccountID
	}
	if cfg.Signatures != nil {
		if cfg.SignatureSync <= 0 {
			cfg.SignatureSync = DefaultSignatureSync
			s.cfg.SignatureSync = cfg.SignatureSync
		}
		s.sigSync = &sigSync{ledger: cfg.Signatures, interval: cfg.SignatureSync, cache: s.sigs,
			tag: func(a string) uint64 { return maphash.String(s.actionSeed, a) },
			onError: func(what string, err error) {
				if err == nil {
					s.log.Info("signature ledger: " + what + " works again")
					return
				}
				s.log.Warn("signature ledger: "+what+" failed; retrying every interval (TC3 signatures are checked against this node's memory meanwhile)", "err", err)
			},
			onClash: func(mine, theirs SignatureUse) {
				msg, level := "a TC3 signature was accepted with two actions on two nodes (a request captured and re-sent with another action within the publication interval)", slog.LevelError
				if s.metadataRead(mine.Action) || s.metadataRead(theirs.Action) {
					// Served on purpose with a signature bound to another
					// action (bind.go); still reported, since a captured read
					// re-sent as a write to another node within the
					// publication interval looks the same from here.
					msg, level = "a TC3 signature was accepted with two actions on two nodes, one of them a read of metadata only (a client that sends a write then a read with one body within a second through two nodes does this; so does a captured read re-sent as a write within the publication interval)", slog.LevelWarn
				}
				s.log.Log(context.Background(), level, msg,
					"signature", truncate(theirs.Signature, 8), "here", truncate(mine.Action, 64), "other", truncate(theirs.Action, 64))
			},
			stop: make(chan struct{}), done: make(chan struct{})}
		go s.sigSync.run(s.now)
	}
	if cfg.RatePerCredential > 0 {
		burst := cfg.BurstPerCredential
		if burst <= 0 {
			burst = max(1, int(cfg.RatePerCredential))
		}
		s.limits = &rateLimiters{limit: rate.Limit(cfg.RatePerCredential), burst: burst}
	}
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.HTTPErrorHandler = s.handleHTTPError
	legacy := chain(s.serveLegacy, s.apiRoute(protocolLegacy, s.authenticateLegacy)...)
	api3 := chain(s.serveAPI3, s.apiRoute(protocolAPI3, s.authenticateAPI3)...)
	e.GET(LegacyPath, legacy)
	e.POST(LegacyPath, legacy)
	e.GET("/", api3)
	aws := chain(s.serveAWS, s.apiRoute(protocolAWS, s.authenticateAWS)...)
	e.POST("/", routeAWS(aws, api3))
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	if cfg.Registry != nil {
		s.metrics = newMetrics(cfg.Registry)
		cfg.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "kmsd_connections_open", Help: "Connections open on the API listener.",
		}, func() float64 { return float64(s.connsOpen.Load()) }))
		e.GET("/metrics", metricsHandler(cfg.Registry))
	}
	s.echo = e
	return s
}

// Close stops the background work New started (publishing TC3
// signatures, after one last publication) and writes the audit summaries
// of the refusals not yet recorded. Call it once the HTTP server has
// stopped, before closing the audit sink; the Server must not serve
// requests afterwards. Calls after the first do nothing.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.sigSync != nil {
			s.sigSync.close()
		}
		s.refusals.close()
	})
}

// Handler returns the http.Handler serving every route.
func (s *Server) Handler() http.Handler { return s.echo }

// newRequestID returns a fresh random request id: a version 4 UUID, as
// uuid.NewString makes, with one allocation instead of three.
func newRequestID() string {
	var u uuid.UUID
	if _, err := rand.Read(u[:]); err != nil {
		return uuid.NewString() // crypto/rand does not fail on Linux; keep the shape if it does
	}
	u[6] = u[6]&0x0f | 0x40 // version 4
	u[8] = u[8]&0x3f | 0x80 // RFC 4122 variant
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
