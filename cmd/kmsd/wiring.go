package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"hsmkms/hsm/p11"
	"hsmkms/kms"
	"hsmkms/store"
)

// openService opens the store and the token and starts the domain service.
// closeAll closes what was opened, the token last.
//
// onIntegrity, if not nil, receives every stored row found failing its
// integrity check (from the start-up load on).
func openService(ctx context.Context, cfg config, log *slog.Logger, obs p11.Observer, onIntegrity func(kms.IntegrityFailure)) (_ *kms.Service, tok *p11.Token, ready map[string]func(context.Context) error, closeAll func(), err error) {
	if err := os.MkdirAll(cfg.dataDir, 0o700); err != nil {
		return nil, nil, nil, nil, fmt.Errorf("data dir: %w", err)
	}
	st, err := openStore(ctx, cfg)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	openCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	tok, err = p11.OpenToken(openCtx, cfg.p11Config(obs))
	cancel()
	if err != nil {
		st.Close()
		return nil, nil, nil, nil, fmt.Errorf("open token %s: %w", cfg.tokenName(), err)
	}
	closeAll = func() {
		if err := st.Close(); err != nil {
			log.Error("closing store", "err", err)
		}
		if err := tok.Close(); err != nil {
			log.Error("closing token", "err", err)
		}
	}
	kc := kms.Config{KeyLimit: cfg.keyLimit, VersionUsageLimit: cfg.usageLimit, Logger: log, Region: cfg.region,
		StaleAfter: cfg.pgStaleAfter, ResyncInterval: cfg.pgResync, OnIntegrityFailure: onIntegrity}
	if kmsConfigHook != nil {
		kmsConfigHook(&kc) // test builds only (see faults.go)
	}
	svc, err := kms.New(ctx, tok, st, kc)
	if err != nil {
		closeAll()
		return nil, nil, nil, nil, fmt.Errorf("start service: %w", err)
	}
	ready = map[string]func(context.Context) error{"token": tok.Ping, "store": st.Ping}
	return svc, tok, ready, closeAll, nil
}

// metaStore is the metadata store kmsd runs on: *store.SQLite (one node)
// or *store.Postgres (several nodes).
type metaStore interface {
	kms.Store
	Ping(ctx context.Context) error
	Close() error
}

// openStore opens the PostgreSQL store when a DSN is configured, else the
// embedded SQLite database in the data directory.
func openStore(ctx context.Context, cfg config) (metaStore, error) {
	if cfg.pgDSN != "" {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		st, err := store.OpenPostgres(octx, store.PostgresConfig{DSN: cfg.pgDSN, MaxConns: int32(cfg.pgMaxConns)})
		if err != nil {
			return nil, fmt.Errorf("open PostgreSQL store: %w", err)
		}
		return st, nil
	}
	st, err := store.Open(ctx, filepath.Join(cfg.dataDir, "kms.db"))
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return st, nil
}
