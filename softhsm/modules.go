package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The PKCS#11 implementation the tests run against is chosen by the
// environment, so that one conformance suite runs on every module:
//
//	KMS_TEST_PKCS11=""|softhsm2  a fresh SoftHSM2 token per test (default)
//	KMS_TEST_PKCS11=nss          a fresh NSS softoken database per test
//	                             (libsoftokn3.so from libnss3, certutil from
//	                             libnss3-tools; see scripts/nss-token.sh)
//	KMS_TEST_PKCS11=external     the token named by KMS_TEST_PKCS11_MODULE,
//	                             KMS_TEST_PKCS11_TOKEN (a label, or an RFC 7512
//	                             pkcs11: URI), KMS_TEST_PKCS11_PIN and
//	                             KMS_TEST_PKCS11_INIT_ARGS; it is shared by every
//	                             test and should be empty and dedicated to them
//
// Tests that need SoftHSM2 itself (the fault-injection module forwards to
// it) call NewSoftHSM2Token and say so.
const (
	EnvKind     = "KMS_TEST_PKCS11"
	EnvModule   = "KMS_TEST_PKCS11_MODULE"
	EnvToken    = "KMS_TEST_PKCS11_TOKEN"
	EnvPIN      = "KMS_TEST_PKCS11_PIN"
	EnvInitArgs = "KMS_TEST_PKCS11_INIT_ARGS"
)

// Kinds of test token.
const (
	KindSoftHSM2 = "softhsm2"
	KindNSS      = "nss"
	KindExternal = "external"
)

// TestKind returns the kind of token the tests use (EnvKind), or an error
// for an unknown value.
func TestKind() (string, error) {
	switch k := os.Getenv(EnvKind); k {
	case "", KindSoftHSM2:
		return KindSoftHSM2, nil
	case KindNSS, KindExternal:
		return k, nil
	default:
		return "", fmt.Errorf("%s=%q: want %s, %s or %s", EnvKind, k, KindSoftHSM2, KindNSS, KindExternal)
	}
}

// NSSModuleCandidates are where distributions put NSS softoken.
// NSS_SOFTOKEN_MODULE, when set, is tried first.
var NSSModuleCandidates = []string{
	"/usr/lib/x86_64-linux-gnu/libsoftokn3.so",
	"/usr/lib/aarch64-linux-gnu/libsoftokn3.so",
	"/usr/lib64/libsoftokn3.so",
	"/usr/lib/libsoftokn3.so",
	"/usr/lib/x86_64-linux-gnu/nss/libsoftokn3.so",
	"/usr/local/opt/nss/lib/libsoftokn3.so",
}

// NSSInstallHint is what a test prints when NSS softoken is missing.
const NSSInstallHint = "NSS softoken is not installed: run `sudo apt-get install -y libnss3 libnss3-tools` (or `make setup`)"

// FindNSSModule returns the path of libsoftokn3.so.
func FindNSSModule() (string, error) {
	return findModule("NSS_SOFTOKEN_MODULE", NSSModuleCandidates, NSSInstallHint)
}

// NSSInitArgs is the C_Initialize library-parameters string that opens the
// NSS database in dir as a token labelled label.
func NSSInitArgs(dir, label string) string {
	return fmt.Sprintf("configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags= dbTokenDescription='%s'", dir, label)
}

// CreateNSS makes a new NSS database in dir (certutil -N) whose password,
// i.e. the token's user PIN, is pin, and returns it as a Token labelled
// label. It does not touch the environment.
func CreateNSS(dir, label, pin string) (Token, error) {
	module, err := FindNSSModule()
	if err != nil {
		return Token{}, err
	}
	certutil, err := exec.LookPath("certutil")
	if err != nil {
		return Token{}, fmt.Errorf("certutil not found: %s", NSSInstallHint)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Token{}, err
	}
	pw := filepath.Join(dir, "pin.txt")
	if err := os.WriteFile(pw, []byte(pin+"\n"), 0o600); err != nil {
		return Token{}, err
	}
	defer os.Remove(pw)
	if out, err := exec.Command(certutil, "-N", "-d", "sql:"+dir, "-f", pw).CombinedOutput(); err != nil {
		return Token{}, fmt.Errorf("certutil -N: %v: %s", err, out)
	}
	return Token{Kind: KindNSS, Module: module, Dir: dir, Label: label, PIN: pin, InitArgs: NSSInitArgs(dir, label)}, nil
}

// externalToken is the token named by the KMS_TEST_PKCS11_* variables.
func externalToken() (Token, error) {
	tok := Token{Kind: KindExternal, Module: os.Getenv(EnvModule), PIN: os.Getenv(EnvPIN), InitArgs: os.Getenv(EnvInitArgs)}
	name := os.Getenv(EnvToken)
	if strings.HasPrefix(name, "pkcs11:") {
		tok.URI = name
	} else {
		tok.Label = name
	}
	if tok.Module == "" || name == "" || tok.PIN == "" {
		return Token{}, fmt.Errorf("%s=%s needs %s, %s and %s", EnvKind, KindExternal, EnvModule, EnvToken, EnvPIN)
	}
	return tok, nil
}

// newAnyToken makes the token the environment asks for (see EnvKind).
func newAnyToken(t testing.TB) Token {
	t.Helper()
	kind, err := TestKind()
	if err != nil {
		t.Fatal(err)
	}
	switch kind {
	case KindNSS:
		var b [6]byte
		if _, err := rand.Read(b[:]); err != nil {
			t.Fatal(err)
		}
		tok, err := CreateNSS(t.TempDir(), "test-"+hex.EncodeToString(b[:]), "1234")
		if err != nil {
			t.Fatalf("nss: %v", err)
		}
		return tok
	case KindExternal:
		tok, err := externalToken()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	return NewSoftHSM2TokenNoEnv(t)
}
