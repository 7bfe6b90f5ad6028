package kms

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"

	"hsmkms/hsm"
)

// Ciphertext envelope, format version 1.
//
// A CiphertextBlob is the standard, padded base64 encoding (RFC 4648 §4, no
// line breaks, canonical padding bits) of:
//
//	offset  size  field
//	0       1     format version, 1
//	1       16    key id: the 16 bytes of the key's UUID
//	17      4     key version, uint32 big-endian, >= 1
//	21      1     IV length, 12
//	22      12    IV
//	34      n+16  ciphertext || GCM tag (n = plaintext length, 1..4096)
//
// Bytes 0..20 are the header. The AES-256-GCM additional authenticated data
// is header || canonical(encryptionContext) (see EncryptionContext), so a
// blob cannot be relabelled to another key or another version of the same key,
// nor opened under another context: any change makes the tag fail.
//
// The IV is deliberately not part of the AAD. GCM authenticates it already
// (it determines the keystream and the tag's mask), and leaving it out means
// the AAD can be computed before encryption. A future mode in which the HSM
// generates the IV and returns it only after encrypting keeps exactly the same
// AAD, hence the same format and the same decryption path.
//
// The ciphertext is the rest of the blob, so trailing garbage cannot exist;
// the total length is bounded by MaxEnvelopeBytes.
const (
	// EnvelopeV1 is the only envelope format version.
	EnvelopeV1 = 1
	// HeaderLen is the length of the authenticated header.
	HeaderLen = 1 + 16 + 4
	// EnvelopeOverhead is the length of an envelope minus its plaintext.
	EnvelopeOverhead = HeaderLen + 1 + hsm.IVBytes + hsm.TagBytes
	// MinEnvelopeBytes is the length of an envelope with an empty
	// ciphertext (which ParseBlob accepts; the HSM then rejects the tag).
	MinEnvelopeBytes = EnvelopeOverhead
	// MaxEnvelopeBytes is the length of an envelope of MaxPlaintext bytes.
	MaxEnvelopeBytes = EnvelopeOverhead + MaxPlaintext
)

// maxBlobChars is the length of the base64 encoding of MaxEnvelopeBytes.
var maxBlobChars = base64.StdEncoding.EncodedLen(MaxEnvelopeBytes)

var blobEncoding = base64.StdEncoding.Strict()

// Envelope is a parsed version-1 ciphertext envelope. IV and Sealed alias the
// buffer ParseBlob decoded into; they are not copied.
type Envelope struct {
	KeyID      [16]byte // the key's UUID
	KeyVersion uint32   // >= 1
	IV         []byte   // hsm.IVBytes bytes
	Sealed     []byte   // ciphertext || tag, at least hsm.TagBytes bytes
}

// Header returns the authenticated header of the envelope: format version,
// key id and key version.
func (e *Envelope) Header() [HeaderLen]byte {
	return makeHeader(e.KeyID, e.KeyVersion)
}

func makeHeader(keyID [16]byte, version uint32) [HeaderLen]byte {
	var h [HeaderLen]byte
	h[0] = EnvelopeV1
	copy(h[1:17], keyID[:])
	binary.BigEndian.PutUint32(h[17:21], version)
	return h
}

func invalidCiphertext(reason string) error {
	return fmt.Errorf("%w: %s", ErrInvalidCiphertext, reason)
}

// validate checks the fields an encoder needs.
func (e *Envelope) validate() error {
	switch {
	case e.KeyVersion == 0:
		return invalidCiphertext("key version is zero")
	case len(e.IV) != hsm.IVBytes:
		return invalidCiphertext(fmt.Sprintf("IV is %d bytes, want %d", len(e.IV), hsm.IVBytes))
	case len(e.Sealed) < hsm.TagBytes:
		return invalidCiphertext("sealed data shorter than the tag")
	case len(e.Sealed) > MaxPlaintext+hsm.TagBytes:
		return invalidCiphertext("sealed data too long")
	}
	return nil
}

// BinaryLen is the length of the binary envelope.
func (e *Envelope) BinaryLen() int {
	return HeaderLen + 1 + len(e.IV) + len(e.Sealed)
}

// AppendBinary appends the binary envelope to dst. It fails with
// ErrInvalidCiphertext if the envelope is not encodable (zero key version,
// wrong IV length, sealed data too short or too long).
func (e *Envelope) AppendBinary(dst []byte) ([]byte, error) {
	if err := e.validate(); err != nil {
		return dst, err
	}
	h := e.Header()
	dst = append(dst, h[:]...)
	dst = append(dst, byte(len(e.IV)))
	dst = append(dst, e.IV...)
	dst = append(dst, e.Sealed...)
	return dst, nil
}

// MarshalBinary returns the binary envelope; see AppendBinary.
func (e *Envelope) MarshalBinary() ([]byte, error) {
	return e.AppendBinary(make([]byte, 0, e.BinaryLen()))
}

// EncodeBlob returns the CiphertextBlob of e: the base64 of its binary form.
// Errors are those of AppendBinary.
func EncodeBlob(e Envelope) (string, error) {
	b, err := e.MarshalBinary()
	if err != nil {
		return "", err
	}
	return encodeBlob(b), nil
}

// ParseBlob decodes and parses a CiphertextBlob. It is pure Go, touches no
// HSM, and allocates only the decoded buffer, which the returned Envelope's
// IV and Sealed alias.
//
// Every failure wraps ErrInvalidCiphertext with a reason: invalid or
// non-canonical base64 (including line breaks or other whitespace), a length
// outside [MinEnvelopeBytes, MaxEnvelopeBytes], an unknown format version, a
// zero key version, or an IV length other than 12. Anything ParseBlob accepts
// re-encodes (EncodeBlob) to exactly s.
func ParseBlob(s string) (Envelope, error) {
	if len(s) == 0 {
		return Envelope{}, invalidCiphertext("empty")
	}
	if len(s) > maxBlobChars {
		return Envelope{}, invalidCiphertext("too long")
	}
	// Padded base64 always has a length that is a multiple of 4; this also
	// rejects most stray whitespace before decoding.
	if len(s)%4 != 0 {
		return Envelope{}, invalidCiphertext("base64 length is not a multiple of 4")
	}
	buf, err := blobEncoding.DecodeString(s)
	if err != nil {
		return Envelope{}, invalidCiphertext("invalid base64")
	}
	// The decoder silently skips '\r' and '\n'; the canonical encoding of n
	// bytes is exactly EncodedLen(n) characters, so anything longer carried
	// skipped characters.
	if blobEncoding.EncodedLen(len(buf)) != len(s) {
		return Envelope{}, invalidCiphertext("non-canonical base64")
	}
	return parseEnvelope(buf)
}

// parseEnvelope parses a binary envelope; the result aliases b.
func parseEnvelope(b []byte) (Envelope, error) {
	if len(b) < 1 {
		return Envelope{}, invalidCiphertext("empty")
	}
	if b[0] != EnvelopeV1 {
		return Envelope{}, invalidCiphertext(fmt.Sprintf("unknown format version %d", b[0]))
	}
	if len(b) < HeaderLen+1 {
		return Envelope{}, invalidCiphertext("truncated header")
	}
	var e Envelope
	copy(e.KeyID[:], b[1:17])
	e.KeyVersion = binary.BigEndian.Uint32(b[17:21])
	if e.KeyVersion == 0 {
		return Envelope{}, invalidCiphertext("key version is zero")
	}
	ivLen := int(b[HeaderLen])
	if ivLen != hsm.IVBytes {
		return Envelope{}, invalidCiphertext(fmt.Sprintf("IV length %d, want %d", ivLen, hsm.IVBytes))
	}
	rest := b[HeaderLen+1:]
	if len(rest) < ivLen+hsm.TagBytes {
		return Envelope{}, invalidCiphertext("truncated")
	}
	if len(b) > MaxEnvelopeBytes {
		return Envelope{}, invalidCiphertext("too long")
	}
	e.IV = rest[:ivLen:ivLen]
	e.Sealed = rest[ivLen:]
	return e, nil
}

// encodeBlob returns b in base64.
func encodeBlob(b []byte) string { return blobEncoding.EncodeToString(b) }
