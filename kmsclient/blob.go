package kmsclient

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
)

// BlobHeader is the public header of a CiphertextBlob made by kmsd: which
// key version sealed it. It is read without any key, so it says nothing
// about the blob's authenticity: kmsd authenticates the header (it is in
// the GCM additional data) when it decrypts.
type BlobHeader struct {
	Format     byte   // envelope format version (1 today)
	KeyID      string // the CMK's id, canonical UUID form
	KeyVersion uint32 // the CMK version that sealed the blob, >= 1
}

// ErrNotBlob wraps the reasons a byte string is not a kmsd envelope.
var ErrNotBlob = errors.New("not a kmsd ciphertext envelope")

// ParseBlobHeader reads the header of a binary envelope (the base64
// decoding of a CiphertextBlob): byte 0 the format version, bytes 1..16
// the key's UUID, bytes 17..20 the key version, big-endian (see
// kms/envelope.go, the format's definition). Only format 1 is known.
func ParseBlobHeader(envelope []byte) (BlobHeader, error) {
	const headerLen = 1 + 16 + 4
	if len(envelope) < headerLen {
		return BlobHeader{}, fmt.Errorf("%w: %d bytes", ErrNotBlob, len(envelope))
	}
	if envelope[0] != 1 {
		return BlobHeader{}, fmt.Errorf("%w: unknown format version %d", ErrNotBlob, envelope[0])
	}
	v := binary.BigEndian.Uint32(envelope[17:21])
	if v == 0 {
		return BlobHeader{}, fmt.Errorf("%w: key version 0", ErrNotBlob)
	}
	u := envelope[1:17]
	id := fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
	return BlobHeader{Format: envelope[0], KeyID: id, KeyVersion: v}, nil
}

// DecodeBlob returns the binary envelope of a CiphertextBlob (standard,
// padded base64).
func DecodeBlob(blob string) ([]byte, error) {
	b, err := base64.StdEncoding.Strict().DecodeString(blob)
	if err != nil {
		return nil, fmt.Errorf("%w: invalid base64", ErrNotBlob)
	}
	return b, nil
}
