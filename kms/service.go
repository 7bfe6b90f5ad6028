package kms

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Config tunes a Service. The zero value is usable.
type Config struct {
	// KeyLimit caps the number of keys that are not Deleted; 0 means DefaultKeyLimit.
	KeyLimit int
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// Logger receives operational events (never plaintext or key material);
	// nil means slog.Default().
	Logger *slog.Logger
}

// CreateKeyInput is the request of CreateKey.
type CreateKeyInput struct {
	Alias       string // required, 1-60 of [A-Za-z0-9_-], first a letter or digit, unique
	Description string // optional, at most 1024 bytes
	KeyUsage    string // "" or "ENCRYPT_DECRYPT"
}

// KeyMetadata describes a key as the API reports it.
type KeyMetadata struct {
	KeyID          string
	Alias          string
	Description    string
	KeyUsage       string
	KeyState       string
	Origin         string
	CreateTime     time.Time
	DeletionDate   time.Time // zero unless PendingDelete or Deleted
	CurrentVersion uint32
}

// EncryptInput is the request of Encrypt.
type EncryptInput struct {
	KeyID             string
	Plaintext         []byte // raw bytes, 1..MaxPlaintext
	EncryptionContext string // "" or a JSON object of strings, <= MaxContextChars
}

// EncryptResult is the response of Encrypt.
type EncryptResult struct {
	KeyID          string
	KeyVersion     uint32
	CiphertextBlob string // base64 of the envelope
}

// DecryptInput is the request of Decrypt.
type DecryptInput struct {
	CiphertextBlob    string
	EncryptionContext string
}

// DecryptResult is the response of Decrypt.
type DecryptResult struct {
	KeyID      string
	KeyVersion uint32
	Plaintext  []byte
}

// Service implements the key-management operations. It is safe for
// concurrent use.
type Service struct{}

var errUnimplemented = errors.New("kms: unimplemented")

// New returns a Service over the token and the store.
func New(ctx context.Context, h HSM, s Store, cfg Config) (*Service, error) {
	return nil, errUnimplemented
}

// CreateKey creates a CMK: a new token object and its metadata.
func (s *Service) CreateKey(ctx context.Context, in CreateKeyInput) (KeyMetadata, error) {
	return KeyMetadata{}, errUnimplemented
}

// Encrypt seals a plaintext under the newest version of a key.
func (s *Service) Encrypt(ctx context.Context, in EncryptInput) (EncryptResult, error) {
	return EncryptResult{}, errUnimplemented
}

// Decrypt opens a ciphertext blob made by Encrypt.
func (s *Service) Decrypt(ctx context.Context, in DecryptInput) (DecryptResult, error) {
	return DecryptResult{}, errUnimplemented
}
