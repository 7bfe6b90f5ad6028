package p11

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/miekg/pkcs11"

	"hsmkms/kms"
	"hsmkms/softhsm"
)

// Token must satisfy the domain's port.
var _ kms.HSM = (*Token)(nil)

// newTestToken makes a throwaway token of the kind the environment asks for
// (softhsm.EnvKind: SoftHSM2 by default, NSS softoken, or an external
// module) and opens it with the given number of sessions (0: default). The
// Token is closed (C_Finalize) when the test ends, before SOFTHSM2_CONF is
// restored.
func newTestToken(t testing.TB, sessions int) (*Token, softhsm.Token) {
	t.Helper()
	st := softhsm.NewToken(t)
	tok, err := OpenToken(context.Background(), testConfig(st, sessions))
	if err != nil {
		t.Fatalf("OpenToken: %v", err)
	}
	t.Cleanup(func() {
		if err := tok.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return tok, st
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// withSession runs fn on a session borrowed from tok's pool.
func withSession(t testing.TB, tok *Token, fn func(s pkcs11.SessionHandle)) {
	t.Helper()
	s, err := tok.acquire(context.Background())
	if err != nil {
		t.Fatalf("acquire: %v", err)
	}
	defer func() { tok.pool <- s }()
	fn(s)
}

func mustGenerate(t testing.TB, tok *Token, id []byte) {
	t.Helper()
	if err := tok.GenerateKey(testCtx(t), id, fmt.Sprintf("test-%x", id)); err != nil {
		t.Fatalf("GenerateKey(%q): %v", id, err)
	}
}

// testConfig is the Config that opens st.
func testConfig(st softhsm.Token, sessions int) Config {
	return Config{
		ModulePath: st.Module,
		TokenLabel: st.Label,
		TokenURI:   st.URI,
		InitArgs:   st.InitArgs,
		PIN:        st.PIN,
		Sessions:   sessions,
	}
}
