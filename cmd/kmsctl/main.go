// Command kmsctl is the operator's command-line client of kmsd. It talks to
// kmsd over its public API only.
//
//	kmsctl [-endpoint URL] create-key -alias NAME [-description TEXT]
//	kmsctl [-endpoint URL] encrypt -key-id ID [-context JSON] (-plaintext TEXT | -in FILE | -in -)
//	kmsctl [-endpoint URL] decrypt [-context JSON] (-blob BLOB | -in FILE | -in -) [-out FILE]
//
// Plaintext is read raw and base64-encoded for the wire by kmsctl; decrypt
// writes the raw plaintext. The endpoint defaults to $KMS_ENDPOINT or
// http://127.0.0.1:8080.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
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
  create-key  -alias NAME [-description TEXT]
  encrypt     -key-id ID [-context JSON] (-plaintext TEXT | -in FILE|-)
  decrypt     [-context JSON] (-blob BLOB | -in FILE|-) [-out FILE]
`

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	def := os.Getenv("KMS_ENDPOINT")
	if def == "" {
		def = "http://127.0.0.1:8080"
	}
	fs := flag.NewFlagSet("kmsctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	endpoint := fs.String("endpoint", def, "kmsd base URL (env KMS_ENDPOINT)")
	timeout := fs.Duration("timeout", 30*time.Second, "request timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return errors.New("missing command")
	}
	c := &client{endpoint: strings.TrimRight(*endpoint, "/"), http: &http.Client{Timeout: *timeout}}
	cmd, rest := fs.Arg(0), fs.Args()[1:]
	switch cmd {
	case "create-key":
		return createKey(ctx, c, rest, stdout, stderr)
	case "encrypt":
		return encrypt(ctx, c, rest, stdin, stdout, stderr)
	case "decrypt":
		return decrypt(ctx, c, rest, stdin, stdout, stderr)
	}
	fs.Usage()
	return fmt.Errorf("unknown command %q", cmd)
}

func createKey(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("create-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	alias := fs.String("alias", "", "alias of the key (required)")
	desc := fs.String("description", "", "description")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *alias == "" {
		return errors.New("create-key: -alias is required")
	}
	var out struct {
		KeyMetadata struct {
			KeyID      string `json:"keyId"`
			Alias      string `json:"alias"`
			CreateTime int64  `json:"createTime"`
			KeyState   string `json:"keyState"`
		} `json:"keyMetadata"`
	}
	if err := c.call(ctx, "CreateKey", url.Values{"alias": {*alias}, "description": {*desc}}, &out); err != nil {
		return err
	}
	m := out.KeyMetadata
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
	v := url.Values{"keyId": {*keyID}, "plaintext": {base64.StdEncoding.EncodeToString(pt)}}
	if *ec != "" {
		v.Set("encryptionContext", *ec)
	}
	var out struct {
		CiphertextBlob string `json:"ciphertextBlob"`
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
	v := url.Values{"ciphertextBlob": {strings.TrimSpace(string(b))}}
	if *ec != "" {
		v.Set("encryptionContext", *ec)
	}
	var out struct {
		Plaintext string `json:"plaintext"`
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

// client calls kmsd's legacy API.
type client struct {
	endpoint string
	http     *http.Client
}

// apiError is an error answer of kmsd.
type apiError struct {
	Code      int
	Message   string
	RequestID string
}

func (e *apiError) Error() string {
	return fmt.Sprintf("code %d: %s (requestId %s)", e.Code, e.Message, e.RequestID)
}

func (c *client) call(ctx context.Context, action string, v url.Values, out any) error {
	v.Set("Action", action)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint+"/v2/index.php", strings.NewReader(v.Encode()))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", action, resp.StatusCode)
	}
	var head struct {
		Code      *int   `json:"code"`
		Message   string `json:"message"`
		RequestID string `json:"requestId"`
	}
	if err := json.Unmarshal(body, &head); err != nil || head.Code == nil {
		return fmt.Errorf("%s: unexpected reply from %s", action, c.endpoint)
	}
	if *head.Code != 0 {
		return &apiError{Code: *head.Code, Message: head.Message, RequestID: head.RequestID}
	}
	return json.Unmarshal(body, out)
}
