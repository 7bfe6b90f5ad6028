// Command kmsctl is the operator's command-line client of kmsd. It talks to
// kmsd over its public API only (API 3.0, signed with TC3-HMAC-SHA256).
//
//	kmsctl [-endpoint URL] create-key -alias NAME [-description TEXT] [-type 1|2]
//	kmsctl [-endpoint URL] import-key -key-id ID -key-file FILE (and the other import commands, import.go)
//	kmsctl [-endpoint URL] encrypt -key-id ID [-context JSON] (-plaintext TEXT | -in FILE | -in -)
//	kmsctl [-endpoint URL] decrypt [-context JSON] (-blob BLOB | -in FILE | -in -) [-out FILE]
//	kmsctl [-endpoint URL] credentials create -name NAME (-admin | -policy-file FILE)
//	kmsctl [-endpoint URL] credentials list
//	kmsctl [-endpoint URL] credentials enable|disable|delete -secret-id ID
//	kmsctl [-endpoint URL] credentials update-policy -secret-id ID -policy-file FILE
//
// Plaintext is read raw and base64-encoded for the wire by kmsctl; decrypt
// writes the raw plaintext. The endpoint defaults to $KMS_ENDPOINT or
// http://127.0.0.1:8080. The credential comes from TENCENTCLOUD_SECRET_ID
// and TENCENTCLOUD_SECRET_KEY, as for the Tencent Cloud SDKs.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"hsmkms/kmsclient"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "kmsctl:", err)
		}
		os.Exit(1)
	}
}

const usage = `usage: kmsctl [-endpoint URL] COMMAND [flags]

commands:
  create-key  -alias NAME [-description TEXT] [-key-usage USAGE] [-type 1|2]   (2: EXTERNAL, material imported)
  encrypt     -key-id ID [-context JSON] (-plaintext TEXT | -in FILE|-)
  decrypt     [-context JSON] (-blob BLOB | -in FILE|-) [-out FILE]
  credentials create -name NAME (-admin | -policy-file FILE)
  credentials list
  credentials enable|disable|delete -secret-id ID
  credentials update-policy -secret-id ID -policy-file FILE
  audit verify FILE   (offline: checks the hash chain of kmsd's audit trail)
` + "%s" + `
Every key command takes -json to print the Response as JSON instead of a table.
The credential is read from TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY.
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	def := os.Getenv("KMS_ENDPOINT")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	fs := flag.NewFlagSet("kmsctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, usage, keyCommandUsage()+importCommandUsage()+tagCommandUsage())
		fs.PrintDefaults()
	}
	endpoint := fs.String("endpoint", def, "kmsd base URL (env KMS_ENDPOINT)")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	caFile := fs.String("ca-file", os.Getenv("KMS_CA_FILE"), "PEM CA bundle that signed kmsd's certificate, for https (env KMS_CA_FILE; default: the system roots)")
	certFile := fs.String("cert-file", os.Getenv("KMS_CERT_FILE"), "PEM client certificate, when kmsd requires mutual TLS (env KMS_CERT_FILE)")
	keyFile := fs.String("key-file", os.Getenv("KMS_KEY_FILE"), "PEM private key of -cert-file (env KMS_KEY_FILE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("missing command")
	}
	if fs.Arg(0) == "audit" {
		return auditCmd(fs.Args()[1:], stdout, stderr)
	}
	u, err := url.Parse(*endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("-endpoint %q: want http://HOST:PORT or https://HOST:PORT", *endpoint)
	}
	secretID, secretKey := os.Getenv("TENCENTCLOUD_SECRET_ID"), os.Getenv("TENCENTCLOUD_SECRET_KEY")
	if secretID == "" || secretKey == "" {
		return errors.New("set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY (make run prints a development credential)")
	}
	tlsCfg, err := kmsclient.LoadTLS(*caFile, *certFile, *keyFile)
	if err != nil {
		return err
	}
	if tlsCfg != nil && u.Scheme != "https" {
		return fmt.Errorf("-ca-file, -cert-file and -key-file need an https -endpoint, not %q", *endpoint)
	}
	kc, err := kmsclient.New(kmsclient.Config{Endpoint: *endpoint, SecretID: secretID, SecretKey: secretKey, Timeout: *timeout, TLS: tlsCfg})
	if err != nil {
		return err
	}
	c := &client{kc}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "create-key":
		return createKey(ctx, c, rest, stdout, stderr)
	case "encrypt":
		return encrypt(ctx, c, rest, stdin, stdout, stderr)
	case "decrypt":
		return decrypt(ctx, c, rest, stdin, stdout, stderr)
	case "credentials":
		return credentials(ctx, c, rest, stdout, stderr)
	case "tag":
		return tagKey(ctx, c, rest, stdout, stderr) // tags.go
	case "tags":
		return listTags(ctx, c, rest, stdout, stderr)
	}
	if _, ok := importCommands[cmd]; ok {
		return importCommand(ctx, c, cmd, rest, stdout, stderr)
	}
	if kc, ok := keyCommands[cmd]; ok {
		return runKeyCommand(ctx, c, cmd, kc, rest, stdout, stderr)
	}
	if ac, ok := asymCommands[cmd]; ok { // asym.go
		return ac.run(ctx, c, rest, stdin, stdout, stderr)
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}

func createKey(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("create-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	alias := fs.String("alias", "", "alias of the key (required)")
	desc := fs.String("description", "", "description")
	keyUsage := fs.String("key-usage", "", "ENCRYPT_DECRYPT (default), ASYMMETRIC_DECRYPT_RSA_2048, ASYMMETRIC_SIGN_VERIFY_RSA_2048, ASYMMETRIC_SIGN_VERIFY_ECC or ASYMMETRIC_SIGN_VERIFY_ECDSA384")
	keyType := fs.Uint64("type", 1, "1: the HSM generates the key; 2: EXTERNAL, PendingImport until import-key")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *alias == "" {
		return errors.New("create-key: -alias is required")
	}
	params := map[string]any{"Alias": *alias, "Description": *desc, "Type": *keyType}
	if *keyUsage != "" {
		params["KeyUsage"] = *keyUsage
	}
	var m struct {
		KeyID      string `json:"KeyId"`
		Alias      string `json:"Alias"`
		CreateTime int64  `json:"CreateTime"`
		KeyState   string `json:"KeyState"`
	}
	if err := c.call(ctx, "CreateKey", params, &m); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "keyId\t%s\nalias\t%s\nstate\t%s\ncreated\t%s\n", m.KeyID, m.Alias, m.KeyState, time.Unix(m.CreateTime, 0).UTC().Format(time.RFC3339))
	return nil
}

func encrypt(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("encrypt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("key-id", "", "CMK id (required)")
	ec := fs.String("context", "", "encryption context, a JSON object of strings")
	text := fs.String("plaintext", "", "plaintext given on the command line")
	in := fs.String("in", "", "read the plaintext from FILE, or - for standard input")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyID == "" {
		return errors.New("encrypt: -key-id is required")
	}
	pt, err := input(*text, *in, stdin, "-plaintext")
	if err != nil {
		return err
	}
	v := map[string]any{"KeyId": *keyID, "Plaintext": base64.StdEncoding.EncodeToString(pt)}
	if *ec != "" {
		v["EncryptionContext"] = *ec
	}
	var out struct {
		CiphertextBlob string `json:"CiphertextBlob"`
	}
	if err := c.call(ctx, "Encrypt", v, &out); err != nil {
		return err
	}
	fmt.Fprintln(stdout, out.CiphertextBlob)
	return nil
}

func decrypt(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("decrypt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	ec := fs.String("context", "", "encryption context given to encrypt")
	blob := fs.String("blob", "", "ciphertextBlob given on the command line")
	in := fs.String("in", "", "read the ciphertextBlob from FILE, or - for standard input")
	outFile := fs.String("out", "", "write the plaintext to FILE instead of standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := input(*blob, *in, stdin, "-blob")
	if err != nil {
		return err
	}
	v := map[string]any{"CiphertextBlob": strings.TrimSpace(string(b))}
	if *ec != "" {
		v["EncryptionContext"] = *ec
	}
	var out struct {
		Plaintext string `json:"Plaintext"`
	}
	if err := c.call(ctx, "Decrypt", v, &out); err != nil {
		return err
	}
	pt, err := base64.StdEncoding.DecodeString(out.Plaintext)
	if err != nil {
		return fmt.Errorf("decrypt: server sent invalid base64: %v", err)
	}
	if *outFile != "" {
		return os.WriteFile(*outFile, pt, 0o600)
	}
	_, err = stdout.Write(pt)
	return err
}

// input returns the value given inline, or read from a file or stdin.
func input(inline, file string, stdin io.Reader, inlineFlag string) ([]byte, error) {
	switch {
	case inline != "" && file != "":
		return nil, fmt.Errorf("give either %s or -in, not both", inlineFlag)
	case inline != "":
		return []byte(inline), nil
	case file == "-":
		return io.ReadAll(io.LimitReader(stdin, 1<<20))
	case file != "":
		return os.ReadFile(file)
	}
	return nil, fmt.Errorf("give %s or -in FILE (or -in - for standard input)", inlineFlag)
}

// apiError is an error answer of kmsd (Code, Message, RequestID); commands
// test for it with errors.As.
type apiError = kmsclient.APIError

// client is kmsctl's handle on kmsd: a kmsclient.Client with the call
// shape kmsctl's commands use.
type client struct{ *kmsclient.Client }

// call sends one API 3.0 action with params as its JSON body and decodes
// the Response object into out (see kmsclient.Client.Call).
func (c *client) call(ctx context.Context, action string, params map[string]any, out any) error {
	return c.Call(ctx, action, params, out)
}
