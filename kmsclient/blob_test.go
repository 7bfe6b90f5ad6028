package kmsclient

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/uuid"

	"hsmkms/kms"
)

// TestParseBlobHeaderAgreesWithKms: the client reads the header of
// envelopes made by kms.EncodeBlob (the format's definition) as kms does.
func TestParseBlobHeaderAgreesWithKms(t *testing.T) {
	id := uuid.New()
	for _, v := range []uint32{1, 2, 1 << 31} {
		blob, err := kms.EncodeBlob(kms.Envelope{KeyID: id, KeyVersion: v, IV: make([]byte, 12), Sealed: bytes.Repeat([]byte{7}, 48)})
		if err != nil {
			t.Fatal(err)
		}
		env, err := DecodeBlob(blob)
		if err != nil {
			t.Fatal(err)
		}
		h, err := ParseBlobHeader(env)
		if err != nil || h.Format != kms.EnvelopeV1 || h.KeyID != id.String() || h.KeyVersion != v {
			t.Fatalf("version %d: %+v, %v; want %s", v, h, err, id)
		}
	}
	for name, b := range map[string][]byte{
		"short":         make([]byte, 20),
		"format 2":      append([]byte{2}, make([]byte, 40)...),
		"key version 0": append([]byte{1}, make([]byte, 40)...),
	} {
		if _, err := ParseBlobHeader(b); !errors.Is(err, ErrNotBlob) {
			t.Errorf("%s: %v, want ErrNotBlob", name, err)
		}
	}
	if _, err := DecodeBlob("not base64!"); !errors.Is(err, ErrNotBlob) {
		t.Errorf("DecodeBlob of garbage: %v", err)
	}
}
