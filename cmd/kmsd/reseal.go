package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"hsmkms/audit"
	"hsmkms/kms"
)

// Audit actions of the integrity checks (see integrityAudit, resealCmd).
const (
	auditIntegrityFailed = "IntegrityCheckFailed"
	auditReseal          = "Reseal"
)

// integrityAudit returns the kms.Config.OnIntegrityFailure hook of kmsd:
// every stored row found failing its integrity check is recorded in the
// audit trail (action IntegrityCheckFailed; KeyId or SecretId names the
// row, requestId is "integrity/KIND/ID"). Failures are deduplicated by the
// service (a row is recorded once until it is resealed), so a tampered
// row re-read at every refresh does not flood the trail.
func integrityAudit(w *audit.Writer, log *slog.Logger) func(kms.IntegrityFailure) {
	if w == nil {
		return nil
	}
	return func(f kms.IntegrityFailure) {
		if err := w.Record(integrityEvent(auditIntegrityFailed, f.Kind, f.ID, "IntegrityCheckFailed")); err != nil {
			log.Error("audit: cannot record an integrity failure", "kind", f.Kind, "id", f.ID, "err", err)
		}
	}
}

func integrityEvent(action, kind, id, code string) audit.Event {
	e := audit.Event{Time: time.Now().UTC(), RequestID: "integrity/" + kind + "/" + id, Source: "kmsd",
		Protocol: "local", Action: action, Code: code}
	switch kind {
	case kms.KindKey:
		e.KeyID = id
	case kms.KindCredential:
		e.SecretID = id
	}
	return e
}

// resealCmd is `kmsd reseal`, the administrator's answer to a row that
// failed its integrity check, once a human has checked the row in the
// database and found it right (or put it right):
//
//	kmsd reseal -key KEYID | -credential SECRETID | -intent HEXID | -import-params HEXID | -unsealed [server flags]
//
// It opens the store and the token as the server does and computes new
// MACs inside the HSM for the row as it is stored now, at the next
// generation. -unsealed seals every row that has no MAC at all (an upgrade
// interrupted after the MAC key was made). Each reseal is recorded in the
// audit trail (action Reseal). Run it while kmsd is stopped on this host:
// it appends to this host's audit trail and, on SQLite, writes the store a
// running kmsd caches. On PostgreSQL the other nodes pick the resealed row
// up at their next refresh.
func resealCmd(ctx context.Context, args []string, env func(string) (string, bool), stdout, stderr io.Writer) error {
	const usage = "usage: kmsd reseal -key KEYID | -credential SECRETID | -intent HEXID | -import-params HEXID | -unsealed [server flags]"
	fs := flag.NewFlagSet("kmsd reseal", flag.ContinueOnError)
	fs.SetOutput(stderr)
	finish, err := configFlags(fs, args, env)
	if err != nil {
		return err
	}
	keyID := fs.String("key", "", "reseal the key with this id and all its versions")
	secretID := fs.String("credential", "", "reseal the credential with this SecretId")
	intent := fs.String("intent", "", "reseal the intent (pending object) with this hex object id")
	unsealed := fs.Bool("unsealed", false, "seal every row that has no MAC")
	importParams := fs.String("import-params", "", "reseal the import parameters whose wrapping key has this hex object id")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	n := 0
	for _, set := range []bool{*keyID != "", *secretID != "", *intent != "", *unsealed, *importParams != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return errors.New(usage)
	}
	cfg, err := finish()
	if err != nil {
		return err
	}
	var auditLog *audit.Writer
	if cfg.auditFile != "" {
		if err := os.MkdirAll(filepath.Dir(cfg.auditFile), 0o700); err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		if auditLog, err = audit.Open(cfg.auditFile); err != nil {
			return err
		}
		defer auditLog.Close()
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc, _, _, closeAll, err := openService(ctx, cfg, log, nil, integrityAudit(auditLog, log))
	if err != nil {
		return err
	}
	defer closeAll()
	ctx = kms.WithPrincipal(ctx, &kms.Principal{Name: "kmsd-reseal", Policy: kms.AdminPolicy()})

	var kind, id string
	switch {
	case *keyID != "":
		kind, id, err = kms.KindKey, *keyID, svc.ResealKey(ctx, *keyID)
	case *secretID != "":
		kind, id, err = kms.KindCredential, *secretID, svc.ResealCredential(ctx, *secretID)
	case *intent != "":
		kind, id, err = kms.KindIntent, *intent, svc.ResealIntent(ctx, *intent)
	case *importParams != "":
		kind, id, err = kms.KindImport, *importParams, svc.ResealImportParams(ctx, *importParams)
	default:
		var sealed int
		sealed, err = svc.ResealUnsealed(ctx)
		kind, id = "unsealed", fmt.Sprint(sealed)
	}
	code := "0"
	if err != nil {
		code = "ResealFailed"
	}
	if auditLog != nil {
		if aerr := auditLog.Record(integrityEvent(auditReseal, kind, id, code)); aerr != nil {
			return errors.Join(err, fmt.Errorf("audit: %w", aerr))
		}
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kmsd: resealed %s %s\n", kind, id)
	return nil
}
