package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
)

// Commands of the asymmetric keys: get-public-key, sign, verify,
// rsa-decrypt, list-algorithms. Messages, signatures and ciphertexts are
// given inline or read from a file (raw bytes, as openssl writes them).

type asymCommand struct {
	summary string
	run     func(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

var asymCommands = map[string]asymCommand{
	"get-public-key":  {"-key-id ID [-out FILE]   (PEM; -der for base64 DER)", getPublicKey},
	"sign":            {"-key-id ID -algorithm ALG [-digest] (-message TEXT | -in FILE|-) [-out FILE]", sign},
	"verify":          {"-key-id ID -algorithm ALG [-digest] (-message TEXT | -in FILE|-) (-signature B64 | -signature-file FILE)", verify},
	"rsa-decrypt":     {"-key-id ID -algorithm RSAES_PKCS1_V1_5|RSAES_OAEP_SHA_1|RSAES_OAEP_SHA_256 (-ciphertext B64 | -in FILE|-) [-out FILE]", rsaDecrypt},
	"list-algorithms": {"(the key usages this token serves)", listAlgorithms},
}

// asymCommandUsage lists the asymmetric commands for the usage text.
func asymCommandUsage() string {
	names := make([]string, 0, len(asymCommands))
	for n := range asymCommands {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "  %-24s %s\n", n, asymCommands[n].summary)
	}
	return b.String()
}

func getPublicKey(ctx context.Context, c *client, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("get-public-key", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("key-id", "", "CMK id (required)")
	out := fs.String("out", "", "write the key to FILE instead of standard output")
	der := fs.Bool("der", false, "print the base64 DER SubjectPublicKeyInfo instead of PEM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyID == "" {
		return errors.New("get-public-key: -key-id is required")
	}
	var r struct {
		PublicKey    string `json:"PublicKey"`
		PublicKeyPem string `json:"PublicKeyPem"`
	}
	if err := c.call(ctx, "GetPublicKey", map[string]any{"KeyId": *keyID}, &r); err != nil {
		return err
	}
	text := r.PublicKeyPem
	if *der {
		text = r.PublicKey + "\n"
	}
	if *out != "" {
		return os.WriteFile(*out, []byte(text), 0o644)
	}
	_, err := io.WriteString(stdout, text)
	return err
}

// signFlags are the flags sign and verify share.
type signFlags struct {
	keyID, alg, message, in *string
	digest                  *bool
}

func newSignFlags(fs *flag.FlagSet) signFlags {
	return signFlags{
		keyID:   fs.String("key-id", "", "CMK id (required)"),
		alg:     fs.String("algorithm", "", "RSA_PSS_SHA_256, RSA_PKCS1_SHA_256, ECC_P256_R1 or ECC_P384_R1 (required)"),
		message: fs.String("message", "", "message given on the command line"),
		in:      fs.String("in", "", "read the message (or digest) from FILE, or - for standard input"),
		digest:  fs.Bool("digest", false, "the input is the message's digest (MessageType DIGEST), not the message"),
	}
}

func (f signFlags) params(cmd string, stdin io.Reader) (map[string]any, error) {
	if *f.keyID == "" || *f.alg == "" {
		return nil, fmt.Errorf("%s: -key-id and -algorithm are required", cmd)
	}
	msg, err := input(*f.message, *f.in, stdin, "-message")
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cmd, err)
	}
	mt := "RAW"
	if *f.digest {
		mt = "DIGEST"
	}
	return map[string]any{"KeyId": *f.keyID, "Algorithm": *f.alg, "MessageType": mt,
		"Message": base64.StdEncoding.EncodeToString(msg)}, nil
}

func sign(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("sign", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sf := newSignFlags(fs)
	out := fs.String("out", "", "write the raw signature to FILE (for openssl) instead of printing it in base64")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := sf.params("sign", stdin)
	if err != nil {
		return err
	}
	var r struct {
		Signature string `json:"Signature"`
	}
	if err := c.call(ctx, "SignByAsymmetricKey", p, &r); err != nil {
		return err
	}
	if *out != "" {
		sig, err := base64.StdEncoding.DecodeString(r.Signature)
		if err != nil {
			return fmt.Errorf("sign: server sent invalid base64: %v", err)
		}
		return os.WriteFile(*out, sig, 0o644)
	}
	fmt.Fprintln(stdout, r.Signature)
	return nil
}

// errSignatureInvalid makes verify exit 1 when the signature is not valid.
var errSignatureInvalid = errors.New("verify: the signature is not valid")

func verify(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sf := newSignFlags(fs)
	sigB64 := fs.String("signature", "", "the signature, base64")
	sigFile := fs.String("signature-file", "", "read the raw signature from FILE")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := sf.params("verify", stdin)
	if err != nil {
		return err
	}
	switch {
	case (*sigB64 == "") == (*sigFile == ""):
		return errors.New("verify: give -signature or -signature-file")
	case *sigB64 != "":
		p["SignatureValue"] = strings.TrimSpace(*sigB64)
	default:
		raw, err := os.ReadFile(*sigFile)
		if err != nil {
			return err
		}
		p["SignatureValue"] = base64.StdEncoding.EncodeToString(raw)
	}
	var r struct {
		SignatureValid bool `json:"SignatureValid"`
	}
	if err := c.call(ctx, "VerifyByAsymmetricKey", p, &r); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "SignatureValid\t%v\n", r.SignatureValid)
	if !r.SignatureValid {
		return errSignatureInvalid
	}
	return nil
}

func rsaDecrypt(ctx context.Context, c *client, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rsa-decrypt", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("key-id", "", "CMK id (required)")
	alg := fs.String("algorithm", "", "RSAES_PKCS1_V1_5, RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256 (required)")
	ct := fs.String("ciphertext", "", "the ciphertext, base64")
	in := fs.String("in", "", "read the raw ciphertext from FILE, or - for standard input")
	outFile := fs.String("out", "", "write the plaintext to FILE instead of standard output")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyID == "" || *alg == "" {
		return errors.New("rsa-decrypt: -key-id and -algorithm are required")
	}
	var b64 string
	switch {
	case *ct != "" && *in != "":
		return errors.New("rsa-decrypt: give either -ciphertext or -in, not both")
	case *ct != "":
		b64 = strings.TrimSpace(*ct)
	default:
		raw, err := input("", *in, stdin, "-ciphertext")
		if err != nil {
			return fmt.Errorf("rsa-decrypt: %w", err)
		}
		b64 = base64.StdEncoding.EncodeToString(raw)
	}
	var r struct {
		Plaintext string `json:"Plaintext"`
	}
	if err := c.call(ctx, "AsymmetricRsaDecrypt", map[string]any{"KeyId": *keyID, "Algorithm": *alg, "Ciphertext": b64}, &r); err != nil {
		return err
	}
	pt, err := base64.StdEncoding.DecodeString(r.Plaintext)
	if err != nil {
		return fmt.Errorf("rsa-decrypt: server sent invalid base64: %v", err)
	}
	if *outFile != "" {
		return os.WriteFile(*outFile, pt, 0o600)
	}
	_, err = stdout.Write(pt)
	return err
}

func listAlgorithms(ctx context.Context, c *client, args []string, _ io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("list-algorithms", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	type info struct{ KeyUsage, Algorithm string }
	var r struct {
		SymmetricAlgorithms, AsymmetricAlgorithms, AsymmetricSignVerifyAlgorithms []info
	}
	if err := c.call(ctx, "ListAlgorithms", map[string]any{}, &r); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	fmt.Fprintln(tw, "Kind\tKeyUsage\tAlgorithm")
	for _, l := range []struct {
		kind  string
		infos []info
	}{{"symmetric", r.SymmetricAlgorithms}, {"asymmetric", r.AsymmetricAlgorithms}, {"sign/verify", r.AsymmetricSignVerifyAlgorithms}} {
		for _, i := range l.infos {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", l.kind, i.KeyUsage, i.Algorithm)
		}
	}
	return nil
}
