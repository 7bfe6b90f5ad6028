// Command kmsd is the hsmkms server: it opens the PKCS#11 token and the
// metadata store, and serves the Tencent Cloud KMS compatible API.
//
// Configuration comes from flags, with environment variables as defaults
// (see -h). Secrets are never flag values: the token PIN is read from the
// KMSD_PIN environment variable or from the file named by -pin-file /
// KMSD_PIN_FILE.
//
// kmsd stops gracefully on SIGINT or SIGTERM: it stops accepting
// connections, lets in-flight requests finish, then closes the sessions and
// logs out of the token.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"hsmkms/audit"
	"hsmkms/httpapi"
	"hsmkms/kms"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "kmsd:", err)
		}
		os.Exit(1)
	}
}

// schedulerProcs returns the GOMAXPROCS kmsd runs with: the GOMAXPROCS
// environment variable when it is set (the Go runtime has applied it
// already), otherwise twice the runtime's default def (the CPUs kmsd may
// use, cgroup limits included).
//
// Every HSM operation is a blocking cgo call. A goroutine in C keeps its P
// until the scheduler hands the P to another thread, and meanwhile the
// goroutines queued on it wait: with one P per CPU, the requests parsed and
// ready to run queue behind HSM calls. Twice as many Ps as CPUs, measured
// side by side on 2 CPUs (BENCHMARKS.md): Encrypt p99 at 64 clients 16.6
// -> 9.2 ms and throughput 1.02-1.08x, for 6-17% more CPU per request.
func schedulerProcs(env func(string) (string, bool), def int) int {
	if v, ok := env("GOMAXPROCS"); ok && v != "" {
		return def
	}
	return 2 * def
}

func run(ctx context.Context, args []string, env func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "credentials" {
		return credentialsCmd(ctx, args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "audit" {
		return auditCmd(ctx, args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "reseal" {
		return resealCmd(ctx, args[1:], env, stdout, stderr)
	}
	if len(args) > 0 && args[0] == "check-config" {
		return checkConfig(args[1:], env, stdout, stderr)
	}
	cfg, err := parseConfig(args, env, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	procs := schedulerProcs(env, runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(procs)
	if v, ok := env("GOGC"); cfg.gcHeapFloor > 0 && (!ok || v == "") {
		stopGC := tuneGC(ctx, cfg.gcHeapFloor, time.Second)
		defer stopGC()
	}

	var certs *certReloader
	if cfg.tlsCert != "" {
		certs = &certReloader{certFile: cfg.tlsCert, keyFile: cfg.tlsKey, caFile: cfg.clientCA}
		if err := certs.load(); err != nil {
			return err
		}
	}
	var auditLog *audit.Writer
	var trail *trailAnchor // anchor.go
	if cfg.auditFile != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.auditFile), 0o700); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		trail = newTrailAnchor(cfg, log)
		if auditLog, err = audit.OpenWith(cfg.auditFile, audit.Options{OnCommit: trail.signal}); err != nil {
			return err
		}
		defer auditLog.Close()
		trail.w = auditLog
	}
	stopDebug, err := startDebug(env, log) // KMSD_DEBUG_ADDR, loopback only; off by default
	if err != nil {
		return err
	}
	defer stopDebug()
	reg := newRegistry()
	hsmMetrics := newHSMMetrics(reg)
	deferred := &deferredAudit{} // integrity failures wait for the trail's check
	svc, tok, ready, closeAll, err := openService(ctx, cfg, log, hsmMetrics, deferred.hook)
	if err != nil {
		return err
	}
	defer closeAll()
	if trail != nil {
		if err := trail.start(ctx, svc); err != nil {
			return err
		}
		defer trail.stop(context.WithoutCancel(ctx))
		deferred.open(integrityAudit(auditLog, log))
	} else {
		deferred.open(func(kms.IntegrityFailure) {}) // no trail: the log and the metrics tell
	}
	registerServiceMetrics(reg, tok, svc)
	// On a shared (PostgreSQL) store: keep the caches consistent with the
	// other nodes; stopped before the store closes.
	syncCtx, stopSync := context.WithCancel(ctx)
	syncDone := make(chan struct{})
	go func() { defer close(syncDone); svc.RunSync(syncCtx) }()
	defer func() { stopSync(); <-syncDone }()
	// Background purge of keys whose deletion window ended and automatic
	// rotation; stopped (and waited for) before the store and token close.
	maintCtx, stopMaint := context.WithCancel(ctx)
	maintDone := make(chan struct{})
	go func() { defer close(maintDone); svc.RunMaintenance(maintCtx) }()
	defer func() { stopMaint(); <-maintDone }()
	apiCfg := httpapi.Config{
		Logger: log, RequestTimeout: cfg.requestTimeout, MaxBodyBytes: cfg.maxBody, MaxConcurrent: cfg.maxConcurrent,
		RatePerCredential: cfg.ratePerCred, BurstPerCredential: cfg.burstPerCred, Registry: reg, Ready: ready,
		MaxConnections: noLimit(cfg.maxConns), MaxConnectionsPerAddress: noLimit(cfg.maxConnsPerIP), RefusalAuditInterval: cfg.refusalAudit,
		Degraded: func() map[string]int { return map[string]int{"integrity": len(svc.IntegrityFailures())} },
	}
	apiCfg.RequireSignedAction, apiCfg.AllowedHosts, apiCfg.TC3Services = cfg.requireSignedAction, cfg.allowedHosts, cfg.tc3Services
	apiCfg.AWS = httpapi.AWSConfig{Regions: cfg.awsRegions, AccountID: cfg.awsAccountID}
	if n, ok := svc.Store().(nonceStore); ok {
		apiCfg.Nonces = sharedNonces{n} // signature v1 nonces remembered by every node
	}
	if l, ok := svc.Store().(signatureStore); ok {
		apiCfg.Signatures = newSharedSignatures(l) // TC3 signatures shared by every node
	}
	if auditLog != nil {
		apiCfg.Audit = auditLog
	}
	api := httpapi.New(svc, apiCfg)
	defer api.Close()

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	ln = api.Listener(ln) // connection limits, total and per client address
	if cfg.httpServer != "" {
		log.Warn("listen.http_server (KMSD_HTTP_SERVER, -http-server) is deprecated and ignored: the API listener is served by Go's net/http", "http_server", cfg.httpServer)
	}
	srv := newHTTPServer(cfg, api.Handler(), log)
	scheme := "http"
	var tlsConfig *tls.Config
	if certs != nil {
		scheme = "https"
		tlsConfig = certs.config()
		watchSIGHUP(ctx, certs, log)
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.serve(ln, tlsConfig) }()
	log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme, "mtls", cfg.clientCA != "", "token", cfg.tokenName(), "sessions", cfg.sessions, "audit", cfg.auditFile, "gomaxprocs", procs, "http_server", "net/http", "aws_regions", cfg.awsRegions)

	select {
	case err := <-serveErr:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down: finishing in-flight requests")
	shCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(shCtx); err != nil {
		log.Error("shutdown", "err", err)
	}
	api.Close() // pending refusal summaries, before the audit file closes
	log.Info("stopped")
	return nil
}
