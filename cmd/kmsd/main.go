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
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hsmkms/hsm/p11"
	"hsmkms/httpapi"
	"hsmkms/kms"
	"hsmkms/store"
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

// config is kmsd's validated configuration.
type config struct {
	addr       string
	module     string
	tokenLabel string
	pin        string // never logged
	dataDir    string
	sessions   int
	logLevel   slog.Level
	keyLimit   int
}

// parseConfig reads flags with environment defaults and validates them
// before anything is opened.
func parseConfig(args []string, env func(string) (string, bool), stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("kmsd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	finish := configFlags(fs, env)
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return finish()
}

// configFlags registers the server's flags on fs; the returned function
// validates them once fs is parsed.
func configFlags(fs *flag.FlagSet, env func(string) (string, bool)) func() (config, error) {
	get := func(name, def string) string {
		if v, ok := env(name); ok && v != "" {
			return v
		}
		return def
	}
	addr := fs.String("addr", get("KMSD_ADDR", "127.0.0.1:8080"), "listen address (env KMSD_ADDR)")
	module := fs.String("module", get("KMSD_PKCS11_MODULE", ""), "path of the PKCS#11 module (env KMSD_PKCS11_MODULE)")
	label := fs.String("token-label", get("KMSD_TOKEN_LABEL", "hsmkms"), "label of the token holding the CMKs (env KMSD_TOKEN_LABEL)")
	pinFile := fs.String("pin-file", get("KMSD_PIN_FILE", ""), "file holding the token user PIN (env KMSD_PIN_FILE); or set KMSD_PIN")
	dataDir := fs.String("data-dir", get("KMSD_DATA_DIR", "var"), "directory of the metadata store (env KMSD_DATA_DIR)")
	sessions := fs.String("sessions", get("KMSD_SESSIONS", "2"), "PKCS#11 sessions, i.e. concurrent HSM calls (env KMSD_SESSIONS)")
	level := fs.String("log-level", get("KMSD_LOG_LEVEL", "info"), "debug, info, warn or error (env KMSD_LOG_LEVEL)")
	keyLimit := fs.String("key-limit", get("KMSD_KEY_LIMIT", strconv.Itoa(kms.DefaultKeyLimit)), "maximum number of CMKs (env KMSD_KEY_LIMIT)")
	return func() (config, error) {
		c := config{addr: *addr, module: *module, tokenLabel: *label, dataDir: *dataDir}
		var errs []error
		if _, _, err := net.SplitHostPort(c.addr); err != nil {
			errs = append(errs, fmt.Errorf("-addr %q: %v", c.addr, err))
		}
		if c.module == "" {
			errs = append(errs, errors.New("-module (KMSD_PKCS11_MODULE) is required: the path of the PKCS#11 module, e.g. /usr/lib/softhsm/libsofthsm2.so"))
		} else if st, err := os.Stat(c.module); err != nil || st.IsDir() {
			errs = append(errs, fmt.Errorf("-module %q: not a readable file", c.module))
		}
		if c.tokenLabel == "" {
			errs = append(errs, errors.New("-token-label must not be empty"))
		}
		if c.dataDir == "" {
			errs = append(errs, errors.New("-data-dir must not be empty"))
		}
		n, err := strconv.Atoi(*sessions)
		if err != nil || n < 1 || n > 1024 {
			errs = append(errs, fmt.Errorf("-sessions %q: want an integer in 1..1024", *sessions))
		}
		c.sessions = n
		kl, err := strconv.Atoi(*keyLimit)
		if err != nil || kl < 1 {
			errs = append(errs, fmt.Errorf("-key-limit %q: want a positive integer", *keyLimit))
		}
		c.keyLimit = kl
		if err := c.logLevel.UnmarshalText([]byte(*level)); err != nil {
			errs = append(errs, fmt.Errorf("-log-level %q: %v", *level, err))
		}
		pin, pinErr := readPIN(*pinFile, env)
		if pinErr != nil {
			errs = append(errs, pinErr)
		}
		c.pin = pin
		return c, errors.Join(errs...)
	}
}

// readPIN takes the PIN from KMSD_PIN or from a file, never from a flag
// value. Exactly one source must be given.
func readPIN(file string, env func(string) (string, bool)) (string, error) {
	envPIN, hasEnv := env("KMSD_PIN")
	switch {
	case hasEnv && file != "":
		return "", errors.New("the PIN is given twice: set either KMSD_PIN or -pin-file, not both")
	case hasEnv:
		if envPIN == "" {
			return "", errors.New("KMSD_PIN is empty")
		}
		return envPIN, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("-pin-file: %v", err)
		}
		pin := strings.TrimRight(string(b), "\r\n")
		if pin == "" {
			return "", fmt.Errorf("-pin-file %q is empty", file)
		}
		return pin, nil
	}
	return "", errors.New("no PIN: set KMSD_PIN or -pin-file (KMSD_PIN_FILE)")
}

func run(ctx context.Context, args []string, env func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "credentials" {
		return credentialsCmd(ctx, args[1:], env, stdout, stderr)
	}
	cfg, err := parseConfig(args, env, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: cfg.logLevel}))
	svc, closeAll, err := openService(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeAll()
	api := httpapi.New(svc, httpapi.Config{Logger: log})

	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String(), "token", cfg.tokenLabel, "sessions", cfg.sessions)

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
	log.Info("stopped")
	return nil
}

// openService opens the store and the token and starts the domain service.
// closeAll closes what was opened, the token last.
func openService(ctx context.Context, cfg config, log *slog.Logger) (_ *kms.Service, closeAll func(), err error) {
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("data dir: %w", err)
	}
	st, err := store.Open(ctx, filepath.Join(cfg.dataDir, "kms.db"))
	if err != nil {
		return nil, nil, fmt.Errorf("open store: %w", err)
	}
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	tok, err := p11.OpenToken(openCtx, p11.Config{ModulePath: cfg.module, TokenLabel: cfg.tokenLabel, PIN: cfg.pin, Sessions: cfg.sessions})
	cancel()
	if err != nil {
		st.Close()
		return nil, nil, fmt.Errorf("open token %q: %w", cfg.tokenLabel, err)
	}
	closeAll = func() {
		if err := st.Close(); err != nil {
			log.Error("closing store", "err", err)
		}
		if err := tok.Close(); err != nil {
			log.Error("closing token", "err", err)
		}
	}
	svc, err := kms.New(ctx, tok, st, kms.Config{KeyLimit: cfg.keyLimit, Logger: log})
	if err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("start service: %w", err)
	}
	return svc, closeAll, nil
}
