package p11

import (
	"context"
	"fmt"
	"runtime"
	"strings"
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
	if st.Kind == softhsm.KindExternal {
		clearExternal(t, tok)
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

// clearExternal destroys what earlier tests left on a shared external
// token (softhsm.KindExternal): every secret key whose label starts with
// "hsmkms" (DefaultLabelPrefix, claim labels, the self-check's) or "test-".
// The external token must be dedicated to the tests.
func clearExternal(t testing.TB, tok *Token) {
	t.Helper()
	withSession(t, tok, func(s pkcs11.SessionHandle) {
		if err := tok.mod.FindObjectsInit(s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY)}); err != nil {
			t.Fatal(err)
		}
		var all []pkcs11.ObjectHandle
		for {
			hs, _, err := tok.mod.FindObjects(s, 256)
			if err != nil {
				t.Fatal(err)
			}
			if len(hs) == 0 {
				break
			}
			all = append(all, hs...)
		}
		_ = tok.mod.FindObjectsFinal(s)
		for _, h := range all {
			attrs, err := tok.mod.GetAttributeValue(s, h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
			if err != nil {
				continue
			}
			if l := string(attrs[0].Value); strings.HasPrefix(l, "hsmkms") || strings.HasPrefix(l, "other-prefix:") {
				_ = tok.mod.DestroyObject(s, h)
			}
		}
	})
	tok.hmu.Lock()
	tok.handles = make(map[string]pkcs11.ObjectHandle)
	tok.hmu.Unlock()
}

// waitBlockedIn polls the goroutine dump until a goroutine is blocked (in
// a select, a channel operation or a lock) inside the function fn
// ("hsm/p11.(*Token).acquire"), and fails the test after 10 s.
func waitBlockedIn(t *testing.T, fn string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		for _, g := range strings.Split(string(buf[:n]), "\n\n") {
			header, frames, _ := strings.Cut(g, "\n")
			blocked := strings.Contains(header, "[select") || strings.Contains(header, "[chan ") || strings.Contains(header, "[sync.")
			if blocked && strings.Contains(frames, fn+"(") {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no goroutine blocked in %s within 10 s", fn)
		}
		time.Sleep(time.Millisecond)
	}
}
