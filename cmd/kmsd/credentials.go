package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"

	"hsmkms/kms"
)

// credentialsCmd is the local bootstrap path for credentials:
//
//	kmsd credentials create -name NAME [-admin | -policy-file FILE] [-if-none] [server flags]
//	kmsd credentials import -name NAME [-admin | -policy-file FILE] [server flags]
//
// It opens the store and the token exactly as the server does (same flags
// and environment), so whoever holds the token PIN and the data directory
// can make the first administrator. import takes the SecretId and SecretKey
// from TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY, the SDKs' own
// variables, never from flags. A running kmsd sees credentials made this way
// after a restart; while it runs, manage credentials through its API
// (kmsctl credentials ...).
func credentialsCmd(ctx context.Context, args []string, env func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "create" && args[0] != "import") {
		return errors.New("usage: kmsd credentials create|import -name NAME [-admin | -policy-file FILE] [-if-none] [server flags]")
	}
	verb := args[0]
	fs := flag.NewFlagSet("kmsd credentials "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	finish, err := configFlags(fs, args[1:], env)
	if err != nil {
		return err
	}
	name := fs.String("name", "", "name of the credential (required)")
	admin := fs.Bool("admin", false, "grant every key and administrative action on every resource (kms:* and kms-admin:* on *)")
	policyFile := fs.String("policy-file", "", "file holding the policy document")
	ifNone := fs.Bool("if-none", false, "create: do nothing if any credential exists; import: do nothing if the SecretId exists")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg, err := finish()
	if err != nil {
		return err
	}
	if *name == "" {
		return errors.New("-name is required")
	}
	var policy kms.Policy
	switch {
	case *admin && *policyFile != "":
		return errors.New("give -admin or -policy-file, not both")
	case *admin:
		policy = kms.AdminPolicy()
	case *policyFile != "":
		doc, err := os.ReadFile(*policyFile)
		if err != nil {
			return err
		}
		if policy, err = kms.ParsePolicy(string(doc)); err != nil {
			return err
		}
	default:
		return errors.New("give -admin or -policy-file")
	}

	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	svc, _, _, closeAll, err := openService(ctx, cfg, log, nil, nil)
	if err != nil {
		return err
	}
	defer closeAll()
	// The operator holding the PIN and the store acts as administrator.
	ctx = kms.WithPrincipal(ctx, &kms.Principal{Name: "kmsd-bootstrap", Policy: kms.AdminPolicy()})

	switch verb {
	case "create":
		if *ifNone {
			list, err := svc.ListCredentials(ctx)
			if err != nil {
				return err
			}
			if len(list) > 0 {
				fmt.Fprintf(stderr, "kmsd: %d credential(s) exist; none created\n", len(list))
				return nil
			}
		}
		info, key, err := svc.CreateCredential(ctx, *name, policy)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "TENCENTCLOUD_SECRET_ID=%s\nTENCENTCLOUD_SECRET_KEY=%s\n", info.SecretID, key)
		fmt.Fprintln(stderr, "kmsd: credential created; the SecretKey is shown only this once")
	case "import":
		id, _ := env("TENCENTCLOUD_SECRET_ID")
		key, _ := env("TENCENTCLOUD_SECRET_KEY")
		if id == "" || key == "" {
			return errors.New("import needs TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY in the environment")
		}
		if *ifNone {
			if c, err := svc.LookupCredential(ctx, id); err == nil {
				if c.SecretKey != key {
					return fmt.Errorf("credential %s exists with another SecretKey", id)
				}
				return nil
			}
		}
		if _, err := svc.ImportCredential(ctx, *name, id, key, policy); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "kmsd: credential %s imported\n", id)
	}
	return nil
}
