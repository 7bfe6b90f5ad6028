package main

// Imported key material (BYOK):
//
//	kmsctl import-key -key-id ID -key-file FILE [-algorithm ALG] [-valid-to T]
//	kmsctl get-parameters-for-import -key-id ID [-algorithm ALG] [-public-key-out FILE]
//	kmsctl import-key-material -key-id ID -token TOKEN -wrapped-in FILE [-valid-to T]
//	kmsctl delete-imported-key-material -key-id ID
//
// import-key does the whole import: it fetches the parameters, wraps the
// 32-byte key of FILE locally with the standard library (RSAES-OAEP under
// the returned public key) and imports it. The key never reaches kmsd in
// the clear; kmsd unwraps it inside the HSM.

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// importCommands are the commands of this file, with their usage.
var importCommands = map[string]string{
	"import-key":                   "-key-id ID -key-file FILE [-algorithm RSAES_OAEP_SHA_256|RSAES_OAEP_SHA_1] [-valid-to UNIX|RFC3339]",
	"get-parameters-for-import":    "-key-id ID [-algorithm ALG] [-public-key-out FILE]",
	"import-key-material":          "-key-id ID -token TOKEN -wrapped-in FILE [-valid-to UNIX|RFC3339]",
	"delete-imported-key-material": "-key-id ID",
}

// importCommandUsage lists the import commands for the usage text.
func importCommandUsage() string {
	var b strings.Builder
	for _, n := range []string{"import-key", "get-parameters-for-import", "import-key-material", "delete-imported-key-material"} {
		fmt.Fprintf(&b, "  %-24s %s\n", n, importCommands[n])
	}
	return b.String()
}

func importCommand(ctx context.Context, c *client, name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	keyID := fs.String("key-id", "", "EXTERNAL CMK id (required)")
	var alg, keyFile, pubOut, token, wrappedIn, validTo *string
	switch name {
	case "import-key":
		alg = fs.String("algorithm", "", "RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1; default: SHA-256 where the HSM offers it, else SHA-1")
		keyFile = fs.String("key-file", "", "the AES-256 key: 32 raw bytes, or their hex or base64 (required)")
		validTo = fs.String("valid-to", "", "when the material expires, Unix seconds or RFC 3339; default never")
	case "get-parameters-for-import":
		alg = fs.String("algorithm", "RSAES_OAEP_SHA_256", "RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1")
		pubOut = fs.String("public-key-out", "", "also write the wrapping public key to FILE (PEM)")
	case "import-key-material":
		token = fs.String("token", "", "ImportToken of get-parameters-for-import (required)")
		wrappedIn = fs.String("wrapped-in", "", "the wrapped key material: raw bytes or base64 (required)")
		validTo = fs.String("valid-to", "", "when the material expires, Unix seconds or RFC 3339; default never")
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *keyID == "" {
		return fmt.Errorf("%s: -key-id is required", name)
	}
	var expiry uint64
	if validTo != nil && *validTo != "" {
		var err error
		if expiry, err = parseValidTo(*validTo); err != nil {
			return fmt.Errorf("%s: -valid-to: %w", name, err)
		}
	}
	switch name {
	case "delete-imported-key-material":
		var out struct{}
		if err := c.call(ctx, "DeleteImportedKeyMaterial", map[string]any{"KeyId": *keyID}, &out); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "keyId\t%s\nstate\tPendingImport\n", *keyID)
		return nil
	case "get-parameters-for-import":
		p, err := getParameters(ctx, c, *keyID, *alg)
		if err != nil {
			return err
		}
		if *pubOut != "" {
			if err := os.WriteFile(*pubOut, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: p.der}), 0o644); err != nil {
				return err
			}
		}
		fmt.Fprintf(stdout, "keyId\t%s\nimportToken\t%s\npublicKey\t%s\nparametersValidTo\t%s\n", *keyID, p.ImportToken,
			p.PublicKey, time.Unix(int64(p.ParametersValidTo), 0).UTC().Format(time.RFC3339))
		return nil
	case "import-key-material":
		if *token == "" || *wrappedIn == "" {
			return errors.New("import-key-material: -token and -wrapped-in are required")
		}
		raw, err := os.ReadFile(*wrappedIn)
		if err != nil {
			return err
		}
		wrapped := decodeBinary(raw, 256)
		if wrapped == nil {
			return fmt.Errorf("import-key-material: %s holds neither 256 bytes nor their base64", *wrappedIn)
		}
		return importWrapped(ctx, c, stdout, *keyID, wrapped, *token, expiry)
	}

	// import-key
	if *keyFile == "" {
		return errors.New("import-key: -key-file is required")
	}
	raw, err := os.ReadFile(*keyFile)
	if err != nil {
		return err
	}
	material := decodeBinary(raw, 32)
	if material == nil {
		return fmt.Errorf("import-key: %s holds no 32-byte key (raw, hex or base64)", *keyFile)
	}
	algorithm := *alg
	if algorithm == "" {
		algorithm = "RSAES_OAEP_SHA_256"
	}
	p, err := getParameters(ctx, c, *keyID, algorithm)
	var ae *apiError
	if *alg == "" && errors.As(err, &ae) && ae.Code == "UnsupportedOperation" {
		fmt.Fprintf(stderr, "kmsctl: the HSM does not unwrap RSAES_OAEP_SHA_256; using RSAES_OAEP_SHA_1\n")
		algorithm = "RSAES_OAEP_SHA_1"
		p, err = getParameters(ctx, c, *keyID, algorithm)
	}
	if err != nil {
		return err
	}
	var h hash.Hash = sha256.New()
	if algorithm == "RSAES_OAEP_SHA_1" {
		h = sha1.New()
	}
	wrapped, err := rsa.EncryptOAEP(h, rand.Reader, p.pub, material, nil)
	if err != nil {
		return fmt.Errorf("import-key: wrapping: %w", err)
	}
	return importWrapped(ctx, c, stdout, *keyID, wrapped, p.ImportToken, expiry)
}

// importParameters is GetParametersForImport's Response, parsed.
type importParameters struct {
	ImportToken       string `json:"ImportToken"`
	PublicKey         string `json:"PublicKey"`
	ParametersValidTo uint64 `json:"ParametersValidTo"`
	der               []byte
	pub               *rsa.PublicKey
}

func getParameters(ctx context.Context, c *client, keyID, alg string) (importParameters, error) {
	var p importParameters
	if err := c.call(ctx, "GetParametersForImport", map[string]any{"KeyId": keyID, "WrappingAlgorithm": alg, "WrappingKeySpec": "RSA_2048"}, &p); err != nil {
		return p, err
	}
	der, err := base64.StdEncoding.DecodeString(p.PublicKey)
	if err != nil {
		return p, errors.New("GetParametersForImport: PublicKey is not base64")
	}
	pk, err := x509.ParsePKIXPublicKey(der)
	rpk, ok := pk.(*rsa.PublicKey)
	if err != nil || !ok || rpk.N.BitLen() != 2048 {
		return p, errors.New("GetParametersForImport: PublicKey is not an RSA-2048 public key")
	}
	p.der, p.pub = der, rpk
	return p, nil
}

func importWrapped(ctx context.Context, c *client, stdout io.Writer, keyID string, wrapped []byte, token string, validTo uint64) error {
	var out struct{}
	if err := c.call(ctx, "ImportKeyMaterial", map[string]any{"KeyId": keyID, "EncryptedKeyMaterial": base64.StdEncoding.EncodeToString(wrapped),
		"ImportToken": token, "ValidTo": validTo}, &out); err != nil {
		return err
	}
	exp := "never"
	if validTo != 0 {
		exp = time.Unix(int64(validTo), 0).UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(stdout, "keyId\t%s\nstate\tEnabled\nvalidTo\t%s\n", keyID, exp)
	return nil
}

// decodeBinary returns raw if it is n bytes, else the hex or base64 it
// holds (surrounding white space ignored) if that decodes to n bytes, else nil.
func decodeBinary(raw []byte, n int) []byte {
	if len(raw) == n {
		return raw
	}
	s := strings.TrimSpace(string(raw))
	if b, err := hex.DecodeString(s); err == nil && len(b) == n {
		return b
	}
	if b, err := base64.StdEncoding.DecodeString(s); err == nil && len(b) == n {
		return b
	}
	return nil
}

func parseValidTo(s string) (uint64, error) {
	if n, err := strconv.ParseUint(s, 10, 64); err == nil {
		return n, nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil || t.Unix() <= 0 {
		return 0, fmt.Errorf("%q is neither Unix seconds nor an RFC 3339 time", s)
	}
	return uint64(t.Unix()), nil
}
