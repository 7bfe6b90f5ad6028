package kms

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func testEnvelope(ptLen int) Envelope {
	e := Envelope{KeyVersion: 7, IV: bytes.Repeat([]byte{0xa5}, 12), Sealed: bytes.Repeat([]byte{0x5a}, ptLen+16)}
	for i := range e.KeyID {
		e.KeyID[i] = byte(i + 1)
	}
	return e
}

func mustBinary(t testing.TB, e Envelope) []byte {
	t.Helper()
	b, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestEnvelopeLayout(t *testing.T) {
	e := testEnvelope(3)
	b := mustBinary(t, e)
	if len(b) != 1+16+4+1+12+3+16 || EnvelopeOverhead != 50 {
		t.Fatalf("len %d", len(b))
	}
	if b[0] != 1 {
		t.Fatalf("version byte %d", b[0])
	}
	if !bytes.Equal(b[1:17], e.KeyID[:]) {
		t.Fatal("key id")
	}
	if binary.BigEndian.Uint32(b[17:21]) != 7 {
		t.Fatal("key version")
	}
	if b[21] != 12 || !bytes.Equal(b[22:34], e.IV) || !bytes.Equal(b[34:], e.Sealed) {
		t.Fatal("iv/sealed")
	}
	h := e.Header()
	if !bytes.Equal(h[:], b[:21]) {
		t.Fatal("header")
	}
	if MaxEnvelopeBytes != 4146 {
		t.Fatalf("MaxEnvelopeBytes = %d", MaxEnvelopeBytes)
	}
}

func TestParseBlobRoundTrip(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 100, MaxPlaintext} {
		e := testEnvelope(n)
		s, err := EncodeBlob(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseBlob(s)
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		if got.KeyID != e.KeyID || got.KeyVersion != e.KeyVersion || !bytes.Equal(got.IV, e.IV) || !bytes.Equal(got.Sealed, e.Sealed) {
			t.Fatalf("n=%d: round trip mismatch", n)
		}
		s2, err := EncodeBlob(got)
		if err != nil || s2 != s {
			t.Fatalf("n=%d: re-encode %v", n, err)
		}
	}
}

func TestParseBlobInvalid(t *testing.T) {
	good := mustBinary(t, testEnvelope(5))
	goodS := b64(good)
	mod := func(f func(b []byte) []byte) string {
		b := append([]byte(nil), good...)
		return b64(f(b))
	}
	tooLong := mustBinary(t, Envelope{KeyVersion: 1, IV: make([]byte, 12), Sealed: make([]byte, MaxPlaintext+16)})
	tooLong = append(tooLong, 0)
	allOnes := mustBinary(t, Envelope{KeyVersion: 1, IV: make([]byte, 12), Sealed: bytes.Repeat([]byte{0xff}, 32)})
	if !strings.Contains(b64(allOnes), "/") {
		t.Fatal("test needs a '/'")
	}

	cases := []struct {
		name, in string
	}{
		{"empty", ""},
		{"not base64", "!!!!"},
		{"url alphabet", strings.NewReplacer("+", "-", "/", "_").Replace(b64(allOnes))},
		{"unpadded", strings.TrimRight(b64(good[:len(good)-2]), "=")},
		{"bad length", goodS[:len(goodS)-1]},
		{"newline inside", goodS[:8] + "\n" + goodS[8:len(goodS)-3]},
		{"crlf appended", goodS + "\r\n"},
		{"space", " " + goodS[1:]},
		{"non-canonical padding bits", nonCanonicalPadding(goodS)},
		{"single byte", b64([]byte{1})},
		{"version 0", mod(func(b []byte) []byte { b[0] = 0; return b })},
		{"version 2", mod(func(b []byte) []byte { b[0] = 2; return b })},
		{"version 255", mod(func(b []byte) []byte { b[0] = 255; return b })},
		{"key version zero", mod(func(b []byte) []byte { binary.BigEndian.PutUint32(b[17:21], 0); return b })},
		{"iv length 16", mod(func(b []byte) []byte { b[21] = 16; return b })},
		{"iv length 0", mod(func(b []byte) []byte { b[21] = 0; return b })},
		{"truncated header", b64(good[:10])},
		{"header only", b64(good[:21])},
		{"no tag", b64(good[:22+12+15])},
		{"too long binary", b64(tooLong)},
		{"too long text", strings.Repeat("AAAA", 2000)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseBlob(c.in)
			if !errors.Is(err, ErrInvalidCiphertext) {
				t.Fatalf("ParseBlob(%.40q) = %v, want ErrInvalidCiphertext", c.in, err)
			}
			if err == ErrInvalidCiphertext {
				t.Fatalf("error carries no reason")
			}
		})
	}
	// Minimum (empty ciphertext, tag only) is accepted by the parser.
	if _, err := ParseBlob(b64(good[:22+12+16])); err != nil {
		t.Fatalf("minimum envelope: %v", err)
	}
}

// nonCanonicalPadding alters the unused low bits before the padding of a
// base64 string whose decoded length is not a multiple of 3.
func nonCanonicalPadding(s string) string {
	if !strings.HasSuffix(s, "=") {
		panic("test needs padding")
	}
	i := strings.IndexByte(s, '=') - 1
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	v := strings.IndexByte(alphabet, s[i])
	return s[:i] + string(alphabet[v|1]) + s[i+1:]
}

func TestEncodeBlobRejects(t *testing.T) {
	for name, e := range map[string]Envelope{
		"zero version": {KeyVersion: 0, IV: make([]byte, 12), Sealed: make([]byte, 16)},
		"short iv":     {KeyVersion: 1, IV: make([]byte, 8), Sealed: make([]byte, 16)},
		"short sealed": {KeyVersion: 1, IV: make([]byte, 12), Sealed: make([]byte, 15)},
		"long sealed":  {KeyVersion: 1, IV: make([]byte, 12), Sealed: make([]byte, MaxPlaintext+17)},
	} {
		if _, err := EncodeBlob(e); !errors.Is(err, ErrInvalidCiphertext) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestParseBlobAllocs(t *testing.T) {
	s, _ := EncodeBlob(testEnvelope(100))
	n := testing.AllocsPerRun(100, func() {
		if _, err := ParseBlob(s); err != nil {
			t.Fatal(err)
		}
	})
	if n > 2 {
		t.Fatalf("ParseBlob allocates %v times", n)
	}
}

func FuzzParseBlob(f *testing.F) {
	for _, n := range []int{0, 1, 16, 255} {
		s, _ := EncodeBlob(testEnvelope(n))
		f.Add(s)
	}
	good := mustBinary(f, testEnvelope(4))
	f.Add(b64(good[:21]))
	bad := append([]byte(nil), good...)
	bad[0] = 2
	f.Add(b64(bad))
	f.Add("")
	f.Add("AQ==")
	f.Add("====")
	f.Add(b64(good) + "\n")
	f.Fuzz(func(t *testing.T, s string) {
		e, err := ParseBlob(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidCiphertext) {
				t.Fatalf("error %v does not wrap ErrInvalidCiphertext", err)
			}
			return
		}
		if e.KeyVersion == 0 || len(e.IV) != 12 || len(e.Sealed) < 16 || e.BinaryLen() > MaxEnvelopeBytes {
			t.Fatalf("accepted an invalid envelope: %+v", e)
		}
		s2, err := EncodeBlob(e)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if s2 != s {
			t.Fatalf("re-encoding differs:\n in %q\nout %q", s, s2)
		}
	})
}
