package p11

import (
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"hsmkms/hsm"
)

// Defaults and limits of Config.
const (
	DefaultSessions    = 2
	MaxSessions        = 256
	DefaultLabelPrefix = "hsmkms:"

	maxLabelPrefix = 64  // bytes
	maxLabel       = 128 // bytes, without the prefix
	maxTokenLabel  = 32  // CK_TOKEN_INFO.label is 32 bytes, blank padded
	minObjectID    = 1
	maxObjectID    = 64
	maxRandom      = 1 << 20
	// maxMessage bounds plaintext and AAD (and ciphertext minus tag). The
	// binding converts lengths through C int; 64 MiB is far above anything
	// a KMS request carries and far below those limits.
	maxMessage = 1 << 26
)

// Config selects a token and sizes the session pool. The zero values of
// Sessions and LabelPrefix select the defaults; ModulePath, TokenLabel and
// PIN are required.
type Config struct {
	ModulePath string // path of the PKCS#11 module
	// InitArgs, when not empty, is passed to C_Initialize as the
	// library-parameters string (CK_C_INITIALIZE_ARGS.pReserved), at
	// OpenToken and at every re-initialisation. NSS softoken needs it
	// (configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db'
	// flags=...); most modules want none. It is never logged.
	InitArgs string
	// The token is selected by TokenLabel or by TokenURI (RFC 7512, see
	// ParseTokenURI: token, manufacturer, model, serial and library
	// attributes), never by slot number: slot ids change. Exactly one of
	// the two is set.
	TokenLabel  string
	TokenURI    string
	PIN         string // user PIN; the caller reads it from env/file; never logged
	Sessions    int    // max concurrent sessions = max concurrent HSM calls; 0 -> 2
	LabelPrefix string // prefix of CKA_LABEL of objects this service makes; "" -> "hsmkms:"

	// NoWorkingCopies turns off per-session working copies of CMKs (see
	// copies.go): every operation then uses the token object itself.
	NoWorkingCopies bool
	// CopyCheckInterval is how long a working copy is used before the
	// token object it copies is checked again (one C_GetAttributeValue),
	// which bounds how long a CMK destroyed behind the service's back
	// (another process) stays usable. 0 means DefaultCopyCheckInterval; a
	// negative value checks on every use.
	CopyCheckInterval time.Duration

	// HSMGeneratedIV selects the mode of FIPS-mode HSMs (AWS CloudHSM, some
	// Luna policies) that refuse caller-supplied GCM IVs: Seal passes an
	// all-zero IV and reads back the IV the token wrote into the mechanism
	// parameters. Off: Seal draws the IV from crypto/rand.
	HSMGeneratedIV bool
	// Observer, when set, receives per-operation timings and
	// re-initialisation results (metrics).
	Observer Observer

	noDirectGCM bool // tests: use the binding for Seal and Open
	noSelfCheck bool // tests: open a token that fails the self-check
}

// DefaultCopyCheckInterval is the default Config.CopyCheckInterval.
//
// A check is one C_GetAttributeValue on the token object, which SoftHSM2
// serves by re-reading the object's file: with 10,000 CMKs in use at random
// a 1-second interval made nearly every Encrypt pay one, halving
// throughput. A CMK the service destroys (purge) or disables is dropped
// from every session at once (DropWorkingCopies, DestroyKey) and refused by
// its state on every node first; the check only bounds the life of a copy
// of a key destroyed outside the service (an operator's PKCS#11 tool).
const DefaultCopyCheckInterval = time.Minute

func (c Config) copyMaxAge() time.Duration {
	switch {
	case c.CopyCheckInterval == 0:
		return DefaultCopyCheckInterval
	case c.CopyCheckInterval < 0:
		return 0
	}
	return c.CopyCheckInterval
}

// Validate reports the first problem of c, wrapping hsm.ErrInvalidInput.
// The message never contains the PIN.
func (c Config) Validate() error {
	switch {
	case c.ModulePath == "":
		return fmt.Errorf("%w: p11 config: module path is empty", hsm.ErrInvalidInput)
	case c.TokenLabel == "" && c.TokenURI == "":
		return fmt.Errorf("%w: p11 config: token label is empty (give a token label or a token URI)", hsm.ErrInvalidInput)
	case c.TokenLabel != "" && c.TokenURI != "":
		return fmt.Errorf("%w: p11 config: give a token label or a token URI, not both", hsm.ErrInvalidInput)
	case len(c.TokenLabel) > maxTokenLabel:
		return fmt.Errorf("%w: p11 config: token label is %d bytes, PKCS#11 allows %d", hsm.ErrInvalidInput, len(c.TokenLabel), maxTokenLabel)
	case c.PIN == "":
		return fmt.Errorf("%w: p11 config: PIN is empty", hsm.ErrInvalidInput)
	case c.Sessions < 0 || c.Sessions > MaxSessions:
		return fmt.Errorf("%w: p11 config: sessions is %d, want 0 (default %d) to %d", hsm.ErrInvalidInput, c.Sessions, DefaultSessions, MaxSessions)
	case len(c.LabelPrefix) > maxLabelPrefix || !printable(c.LabelPrefix):
		return fmt.Errorf("%w: p11 config: label prefix must be printable UTF-8 of at most %d bytes", hsm.ErrInvalidInput, maxLabelPrefix)
	case strings.ContainsRune(c.InitArgs, 0):
		return fmt.Errorf("%w: p11 config: init args contain a NUL byte", hsm.ErrInvalidInput)
	}
	if c.TokenURI != "" {
		if _, err := ParseTokenURI(c.TokenURI); err != nil {
			return err
		}
	}
	return nil
}

// selector is the token c selects, as a TokenURI. c is valid.
func (c Config) selector() TokenURI {
	if c.TokenURI != "" {
		u, _ := ParseTokenURI(c.TokenURI)
		return u
	}
	return TokenURI{Token: c.TokenLabel}
}

func (c Config) withDefaults() Config {
	if c.Sessions == 0 {
		c.Sessions = DefaultSessions
	}
	if c.LabelPrefix == "" {
		c.LabelPrefix = DefaultLabelPrefix
	}
	return c
}

// printable reports whether s is valid UTF-8 made of printable runes
// (unicode.IsPrint: letters, marks, numbers, punctuation, symbols, ASCII space).
func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func checkObjectID(id []byte) error {
	if len(id) < minObjectID || len(id) > maxObjectID {
		return fmt.Errorf("%w: object id is %d bytes, want %d..%d", hsm.ErrInvalidInput, len(id), minObjectID, maxObjectID)
	}
	return nil
}
