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
	cands := ModuleCandidates
	if m := os.Getenv("SOFTHSM2_MODULE"); m != "" {
		cands = append([]string{m}, cands...)
	}
	for _, c := range cands {
		if _, err := os.Stat(c); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("%s", InstallHint)
}

// Token describes a SoftHSM2 token made for one test.
type Token struct {
	Module string // path of libsofthsm2.so
	Conf   string // path of the softhsm2.conf that points at Dir
	Dir    string // token directory
	Label  string // token label, unique per call
	PIN    string // user PIN
	SOPIN  string // security officer PIN
}

// Env returns the environment entries a child process needs to see the token.
func (tok Token) Env() []string {
	return []string{"SOFTHSM2_CONF=" + tok.Conf}
}

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
	return Token{Module: module, Conf: conf, Dir: dir, Label: label, PIN: pin, SOPIN: soPIN}, nil
}

// NewToken creates a throwaway token in t.TempDir() and points SOFTHSM2_CONF
// at it for the rest of the test (t.Setenv, so the test must not be
// parallel). If SoftHSM2 is missing the test fails (never skips) with
// installation instructions.
func NewToken(t testing.TB) Token {
	t.Helper()
	tok := NewTokenNoEnv(t)
	t.Setenv("SOFTHSM2_CONF", tok.Conf)
	return tok
}

// NewTokenNoEnv is NewToken without changing the environment; use it when
// the token is handed to a child process through Token.Env.
func NewTokenNoEnv(t testing.TB) Token {
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
