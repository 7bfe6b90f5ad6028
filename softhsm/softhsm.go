// Package softhsm makes throwaway SoftHSM2 tokens for tests and locates the
// SoftHSM2 PKCS#11 module. It is imported only by _test.go files and test
// tools; nothing in the server depends on it.
//
// Every token lives in its own directory with its own softhsm2.conf, because
// SoftHSM2 processes that open one token directory at the same instant can
// fail, and because a token is found by label, never by slot number (slot ids
// change when a token is initialised).
package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// ModuleCandidates are the places Debian, Ubuntu, Fedora and Homebrew put
// the SoftHSM2 module. SOFTHSM2_MODULE, when set, is tried first.
var ModuleCandidates = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// InstallHint is what a test or a script prints when SoftHSM2 is missing.
const InstallHint = "SoftHSM2 is not installed: run `sudo apt-get install -y softhsm2` (or `make setup`, which does it for you)"

// FindModule returns the path of the SoftHSM2 PKCS#11 module, or an error
// that says how to install it.
func FindModule() (string, error) {
	return findModule("SOFTHSM2_MODULE", ModuleCandidates, InstallHint)
}

// findModule returns the first of the path in the environment variable
// envVar (when set) and cands that exists, or an error saying hint.
func findModule(envVar string, cands []string, hint string) (string, error) {
	if m := os.Getenv(envVar); m != "" {
		cands = append([]string{m}, cands...)
	}
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", errors.New(hint)
}

// Token describes a token made for one test (SoftHSM2 or NSS softoken), or
// the external token the environment names (see EnvKind).
type Token struct {
	Kind     string // KindSoftHSM2, KindNSS or KindExternal
	Module   string // path of the PKCS#11 module (libsofthsm2.so, libsoftokn3.so...)
	Conf     string // SoftHSM2: path of the softhsm2.conf that points at Dir
	Dir      string // token directory (SoftHSM2) or database directory (NSS)
	Label    string // token label, unique per call; empty when URI selects the token
	URI      string // external tokens only: an RFC 7512 URI selecting the token
	PIN      string // user PIN
	SOPIN    string // SoftHSM2: security officer PIN
	InitArgs string // C_Initialize library parameters (NSS: configdir=...); "" none
}

// Env returns the environment entries a child process (kmsd) needs to see
// the token: SOFTHSM2_CONF for SoftHSM2, KMSD_PKCS11_INIT_ARGS when the
// module needs initialisation arguments.
func (tok Token) Env() []string {
	var env []string
	if tok.Conf != "" {
		env = append(env, "SOFTHSM2_CONF="+tok.Conf)
	}
	if tok.InitArgs != "" {
		env = append(env, "KMSD_PKCS11_INIT_ARGS="+tok.InitArgs)
	}
	return env
}

// SoftHSM2 reports whether the token is a SoftHSM2 token.
func (tok Token) SoftHSM2() bool { return tok.Kind == KindSoftHSM2 }

// WriteConf writes a softhsm2.conf whose token directory is tokenDir.
func WriteConf(path, tokenDir string) error {
	conf := fmt.Sprintf("# written by hsmkms softhsm\ndirectories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokenDir)
	return os.WriteFile(path, []byte(conf), 0o600)
}

// Create initialises a new token labelled label with the given PINs in a
// fresh directory under root, and returns it. It does not touch the
// environment of the calling process.
func Create(root, label, pin, soPIN string) (Token, error) {
	module, err := FindModule()
	if err != nil {
		return Token{}, err
	}
	dir := filepath.Join(root, "tokens")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Token{}, err
	}
	conf := filepath.Join(root, "softhsm2.conf")
	if err := WriteConf(conf, dir); err != nil {
		return Token{}, err
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return Token{}, fmt.Errorf("softhsm2-util not found: %s", InstallHint)
	}
	cmd := exec.Command(util, "--init-token", "--free", "--label", label, "--pin", pin, "--so-pin", soPIN)
	cmd.Env = append(os.Environ(), "SOFTHSM2_CONF="+conf)
	if out, err := cmd.CombinedOutput(); err != nil {
		return Token{}, fmt.Errorf("softhsm2-util --init-token: %v: %s", err, out)
	}
	return Token{Kind: KindSoftHSM2, Module: module, Conf: conf, Dir: dir, Label: label, PIN: pin, SOPIN: soPIN}, nil
}

// NewToken makes the token the environment asks for (EnvKind; by default a
// throwaway SoftHSM2 token in t.TempDir()) and, for SoftHSM2, points
// SOFTHSM2_CONF at it for the rest of the test (t.Setenv, so the test must
// not be parallel). If the module is missing the test fails (never skips)
// with installation instructions.
func NewToken(t testing.TB) Token {
	t.Helper()
	tok := NewTokenNoEnv(t)
	if tok.Conf != "" {
		t.Setenv("SOFTHSM2_CONF", tok.Conf)
	}
	return tok
}

// NewTokenNoEnv is NewToken without changing the environment; use it when
// the token is handed to a child process through Token.Env.
func NewTokenNoEnv(t testing.TB) Token {
	t.Helper()
	return newAnyToken(t)
}

// NewSoftHSM2Token is NewToken for tests that need SoftHSM2 whatever the
// environment asks for (the fault-injection module forwards to SoftHSM2).
func NewSoftHSM2Token(t testing.TB) Token {
	t.Helper()
	tok := NewSoftHSM2TokenNoEnv(t)
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	return tok
}

// NewSoftHSM2TokenNoEnv is NewSoftHSM2Token without changing the environment.
func NewSoftHSM2TokenNoEnv(t testing.TB) Token {
	t.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	tok, err := Create(t.TempDir(), "test-"+hex.EncodeToString(b[:]), "1234", "5678")
	if err != nil {
		t.Fatalf("softhsm: %v", err)
	}
	return tok
}
