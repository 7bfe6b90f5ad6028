package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"
)

// credentials manages API credentials through kmsd's credential actions.
func credentials(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("credentials: want create, list, enable, disable, delete or update-policy")
	}
	verb := args[0]
	fs := flag.NewFlagSet("credentials "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	name := fs.String("name", "", "name of the credential")
	admin := fs.Bool("admin", false, "grant every key and administrative action on every resource (kms:* and kms-admin:* on *)")
	policyFile := fs.String("policy-file", "", "file holding the policy document")
	secretID := fs.String("secret-id", "", "SecretId of the credential")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	policy := func() (string, error) {
		switch {
		case *admin && *policyFile != "":
			return "", errors.New("give -admin or -policy-file, not both")
		case *admin:
			return `{"version":"2.0","statement":[{"effect":"allow","action":["kms:*","kms-admin:*"],"resource":["*"]}]}`, nil
		case *policyFile != "":
			b, err := os.ReadFile(*policyFile)
			return string(b), err
		}
		return "", errors.New("give -admin or -policy-file")
	}
	needID := func() error {
		if *secretID == "" {
			return errors.New("-secret-id is required")
		}
		return nil
	}
	var empty struct{}
	switch verb {
	case "create":
		if *name == "" {
			return errors.New("-name is required")
		}
		doc, err := policy()
		if err != nil {
			return err
		}
		var out struct{ SecretId, SecretKey string }
		if err := c.call(ctx, "CreateCredential", map[string]any{"Name": *name, "Policy": doc}, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "TENCENTCLOUD_SECRET_ID=%s\nTENCENTCLOUD_SECRET_KEY=%s\n", out.SecretId, out.SecretKey)
		fmt.Fprintln(stderr, "kmsctl: the SecretKey is shown only this once")
		return nil
	case "list":
		var out struct {
			Credentials []struct {
				SecretId   string
				Name       string
				Enabled    bool
				CreateTime int64
				Policy     string
			}
		}
		if err := c.call(ctx, "ListCredentials", map[string]any{}, &out); err != nil {
			return err
		}
		if *asJSON {
			return json.NewEncoder(stdout).Encode(out.Credentials)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SECRET ID\tNAME\tENABLED\tCREATED\tPOLICY")
		for _, c := range out.Credentials {
			fmt.Fprintf(tw, "%s\t%s\t%v\t%s\t%s\n", c.SecretId, c.Name, c.Enabled, time.Unix(c.CreateTime, 0).UTC().Format(time.RFC3339), c.Policy)
		}
		return tw.Flush()
	case "enable", "disable", "delete":
		if err := needID(); err != nil {
			return err
		}
		action := map[string]string{"enable": "EnableCredential", "disable": "DisableCredential", "delete": "DeleteCredential"}[verb]
		return c.call(ctx, action, map[string]any{"SecretId": *secretID}, &empty)
	case "update-policy":
		if err := needID(); err != nil {
			return err
		}
		doc, err := policy()
		if err != nil {
			return err
		}
		return c.call(ctx, "UpdateCredentialPolicy", map[string]any{"SecretId": *secretID, "Policy": doc}, &empty)
	}
	return fmt.Errorf("credentials: unknown command %q", verb)
}
