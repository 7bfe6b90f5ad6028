package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"hsmkms/hsm/p11"
)

// certReloader serves the TLS certificate (and the client CA pool of mTLS)
// from files, reloaded on SIGHUP without dropping connections: new
// handshakes use the new files, established connections are untouched.
type certReloader struct {
	certFile, keyFile, caFile string
	cert                      atomic.Pointer[tls.Certificate]
	pool                      atomic.Pointer[x509.CertPool]
}

// load reads the files; on error the previous certificate stays in use.
func (r *certReloader) load() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return fmt.Errorf("TLS certificate %s / key %s: %w", r.certFile, r.keyFile, err)
	}
	var pool *x509.CertPool
	if r.caFile != "" {
		pem, err := os.ReadFile(r.caFile)
		if err != nil {
			return fmt.Errorf("TLS client CA: %w", err)
		}
		pool = x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("TLS client CA %s: no PEM certificate", r.caFile)
		}
	}
	r.cert.Store(&cert)
	if pool != nil {
		r.pool.Store(pool)
	}
	return nil
}

// tls12Suites are the TLS 1.2 cipher suites kmsd accepts: ECDHE key
// exchange with an AEAD (AES-GCM, ChaCha20-Poly1305) only; no CBC, no
// static RSA key exchange. TLS 1.3 suites are Go's (all AEAD, not
// configurable).
var tls12Suites = []uint16{
	tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
	tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
	tls.TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

// config returns the server's TLS configuration: TLS 1.2 (AEAD suites
// only, tls12Suites) or newer, and a verified client certificate when a
// client CA is configured (mTLS, on top of request signing).
func (r *certReloader) config() *tls.Config {
	base := &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: tls12Suites}
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := &tls.Config{MinVersion: tls.VersionTLS12, CipherSuites: tls12Suites, Certificates: []tls.Certificate{*r.cert.Load()}}
		if r.caFile != "" {
			c.ClientAuth = tls.RequireAndVerifyClientCert
			c.ClientCAs = r.pool.Load()
		}
		return c, nil
	}
	return base
}

// watchSIGHUP reloads the TLS files on SIGHUP until ctx ends.
func watchSIGHUP(ctx context.Context, r *certReloader, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := r.load(); err != nil {
					log.Error("TLS reload failed; keeping the previous certificate", "err", err)
				} else {
					log.Info("TLS certificate reloaded")
				}
			}
		}
	}()
}

// newRegistry returns the metrics registry with the Go runtime and process
// collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// checkConfig is `kmsd check-config`: it validates the configuration as
// the server would at start, including the TLS files and the audit file,
// opens the token as the server would (module, init args, token, PIN,
// then the start-up self-check of the mechanisms kmsd uses and an
// AES-256-GCM round trip in the configured IV mode) and closes it again,
// without opening the store, and prints a summary without secrets. A
// refused PIN is tried once: check-config never retries a login.
func checkConfig(args []string, env func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg, err := parseConfig(args, env, stderr)
	if err != nil {
		return err
	}
	var errs []error
	if cfg.tlsCert != "" {
		r := &certReloader{certFile: cfg.tlsCert, keyFile: cfg.tlsKey, caFile: cfg.clientCA}
		if err := r.load(); err != nil {
			errs = append(errs, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	tok, err := p11.OpenToken(ctx, cfg.p11Config(nil))
	cancel()
	if err != nil {
		errs = append(errs, fmt.Errorf("open token %s: %w", cfg.tokenName(), err))
	} else if err := tok.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close token %s: %w", cfg.tokenName(), err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	tlsMode := "off (plain HTTP)"
	if cfg.tlsCert != "" {
		tlsMode = "on"
		if cfg.clientCA != "" {
			tlsMode = "on, client certificates required (mTLS)"
		}
	}
	auditMode := cfg.auditFile
	if auditMode == "" {
		auditMode = "disabled"
	}
	fmt.Fprintf(stdout, "configuration OK\n  listen   %s (TLS %s)\n  module   %s\n  token    %s (%d sessions, IV mode %s; login and self-check passed)\n  data dir %s\n  audit    %s\n  limits   body %d B, request %s, %d concurrent, %g req/s per credential, %d connections (%d per address; 0 = no limit)\n",
		cfg.addr, tlsMode, cfg.module, cfg.tokenName(), cfg.sessions, cfg.ivMode, cfg.dataDir, auditMode,
		cfg.maxBody, cfg.requestTimeout, cfg.maxConcurrent, cfg.ratePerCred, cfg.maxConns, cfg.maxConnsPerIP)
	return nil
}

// noLimit maps a configured connection limit (0: none) to httpapi.Config's
// convention (< 0: none, 0: the default).
func noLimit(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

// httpServer serves the API listener with net/http.
type httpServer struct{ http.Server }

func newHTTPServer(cfg config, h http.Handler, log *slog.Logger) *httpServer {
	return &httpServer{http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.readHeader,
		ReadTimeout:       cfg.readTimeout,
		WriteTimeout:      cfg.writeTimeout,
		IdleTimeout:       cfg.idleTimeout,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// HTTP/1.1 only, over TLS too (as the API listener has always
		// been): no HTTP/2, whose many streams per connection would let one
		// connection of the limited few carry any number of requests.
		// (The certificate-reloading TLS config offers no ALPN protocol
		// today, so h2 is not negotiated anyway; this keeps it so.)
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
	}}
}

// serve serves ln, with TLS when tlsConfig is set, until Shutdown.
func (s *httpServer) serve(ln net.Listener, tlsConfig *tls.Config) error {
	if tlsConfig != nil {
		s.TLSConfig = tlsConfig
		return s.ServeTLS(ln, "", "")
	}
	return s.Serve(ln)
}
