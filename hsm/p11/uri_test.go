package p11

import (
	"errors"
	"strings"
	"testing"
	"time"

	"hsmkms/hsm"
	"hsmkms/softhsm"
)

func TestParseTokenURI(t *testing.T) {
	cases := []struct {
		uri  string
		want TokenURI
		err  string
	}{
		{uri: "pkcs11:token=hsmkms", want: TokenURI{Token: "hsmkms"}},
		{uri: "pkcs11:token=my%20token;serial=0a1b", want: TokenURI{Token: "my token", Serial: "0a1b"}},
		// What p11tool --list-tokens prints.
		{uri: "pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=2c1f9e3b7c9d1a2e;token=hsmkms",
			want: TokenURI{Token: "hsmkms", Manufacturer: "SoftHSM project", Model: "SoftHSM v2", Serial: "2c1f9e3b7c9d1a2e"}},
		{uri: "pkcs11:library-manufacturer=Mozilla%20Foundation;library-version=3;token=NSS%20Certificate%20DB",
			want: TokenURI{Token: "NSS Certificate DB", LibraryManufacturer: "Mozilla Foundation", LibraryVersion: "3"}},
		{uri: "pkcs11:serial=42", want: TokenURI{Serial: "42"}},
		{uri: "token=x", err: "pkcs11:"},
		{uri: "pkcs11:", err: "no token attribute"},
		{uri: "pkcs11:library-manufacturer=x", err: "no token attribute"},
		{uri: "pkcs11:token=t?pin-value=1234", err: "pin-value"},
		{uri: "pkcs11:token=t?pin-source=file:/x", err: "pin-source"},
		{uri: "pkcs11:token=t?module-path=/x.so", err: "module-path"},
		{uri: "pkcs11:token=t;slot-id=3", err: "slot ids change"},
		{uri: "pkcs11:token=t;object=k;type=secret-key", err: "names an object"},
		{uri: "pkcs11:token=t;colour=red", err: "unknown attribute"},
		{uri: "pkcs11:token=a;token=b", err: "twice"},
		{uri: "pkcs11:token", err: "malformed"},
		{uri: "pkcs11:token=%zz", err: "token"},
		{uri: "pkcs11:serial=" + strings.Repeat("1", 17), err: "16"},
	}
	for _, c := range cases {
		got, err := ParseTokenURI(c.uri)
		if c.err != "" {
			if !errors.Is(err, hsm.ErrInvalidInput) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseTokenURI(%q) = %v, want hsm.ErrInvalidInput mentioning %q", c.uri, err, c.err)
			}
			if strings.Contains(c.uri, "1234") && err != nil && strings.Contains(err.Error(), "1234") {
				t.Errorf("error %q repeats the PIN", err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseTokenURI(%q) = %+v, %v; want %+v", c.uri, got, err, c.want)
			continue
		}
		// String round-trips.
		if again, err := ParseTokenURI(got.String()); err != nil || again != got {
			t.Errorf("ParseTokenURI(%q.String() = %q) = %+v, %v", c.uri, got.String(), again, err)
		}
	}
}

// A token is found by any of its CK_TOKEN_INFO attributes, as p11tool and
// pkcs11-tool print them; a URI that matches nothing lists what is there.
func TestOpenTokenByURI(t *testing.T) {
	tok, st := newTestToken(t, 1)
	info, err := tok.mod.GetTokenInfo(tok.slot)
	if err != nil {
		t.Fatal(err)
	}
	full := TokenURI{Token: trimPad(info.Label), Manufacturer: trimPad(info.ManufacturerID), Model: trimPad(info.Model), Serial: trimPad(info.SerialNumber)}
	if err := tok.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	for _, u := range []TokenURI{full, {Serial: full.Serial, Token: full.Token}, {Token: full.Token, Manufacturer: full.Manufacturer}} {
		cfg := testConfig(st, 1)
		cfg.TokenLabel, cfg.TokenURI = "", u.String()
		tok, err := OpenToken(ctx, cfg)
		if err != nil {
			t.Fatalf("OpenToken(%s): %v", u, err)
		}
		if err := tok.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		tok.Close()
	}
	cfg := testConfig(st, 1)
	cfg.TokenLabel, cfg.TokenURI = "", TokenURI{Token: full.Token, Serial: "no-such-serial"}.String()
	_, err = OpenToken(ctx, cfg)
	if !errors.Is(err, hsm.ErrTokenNotFound) || !strings.Contains(err.Error(), "serial=no-such-serial") || !strings.Contains(err.Error(), full.Serial) {
		t.Fatalf("OpenToken with a wrong serial = %v, want hsm.ErrTokenNotFound naming the URI and the tokens present", err)
	}
}

// Config.InitArgs reaches C_Initialize as pReserved. SoftHSM2 refuses any
// pReserved with CKR_ARGUMENTS_BAD and NSS softoken refuses to start
// without one: either way the error is a configuration error that names
// the setting, not "invalid input".
func TestInitArgsReachCInitialize(t *testing.T) {
	st := softhsm.NewToken(t)
	cfg := testConfig(st, 1)
	if cfg.InitArgs == "" {
		cfg.InitArgs = "configdir='sql:/nonexistent' flags=readOnly"
	} else {
		cfg.InitArgs = ""
	}
	_, err := OpenToken(testCtx(t), cfg)
	if !errors.Is(err, hsm.ErrMisconfigured) || !strings.Contains(err.Error(), "init_args") || !strings.Contains(err.Error(), "CKR_ARGUMENTS_BAD") {
		t.Fatalf("OpenToken with init args the module does not take = %v, want hsm.ErrMisconfigured naming init_args", err)
	}
	if cfg.InitArgs != "" && strings.Contains(err.Error(), cfg.InitArgs) {
		t.Errorf("error repeats the init args: %v", err)
	}
}

// A re-initialisation passes the init args again (NSS softoken cannot
// start without them).
func TestReinitialisationKeepsInitArgs(t *testing.T) {
	tok, _ := newTestToken(t, 2)
	ctx := testCtx(t)
	id := []byte("reinit-args")
	mustGenerate(t, tok, id)
	tok.goDown()
	deadline := time.Now().Add(10 * time.Second)
	for tok.Stats().Reinits == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no re-initialisation within 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !tok.ownsInit {
		t.Fatal("the Token did not initialise the module itself")
	}
	if _, _, err := tok.Seal(ctx, id, []byte("after"), testAAD); err != nil {
		t.Fatalf("Seal after re-initialisation: %v", err)
	}
}
