// Package kms is the key-management domain: customer master keys (CMKs),
// their versions and states, the ciphertext envelope and the encryption
// context. It knows nothing of HTTP and nothing of PKCS#11: key material is
// reached only through the HSM interface and metadata only through Store.
package kms

import (
	"errors"

	"hsmkms/hsm"
)

// Errors returned by Service. Callers classify with errors.Is; the HTTP edge
// maps each to a wire code.
var (
	// Input errors.
	ErrInvalidKeyID      = errors.New("kms: invalid key id")
	ErrInvalidAlias      = errors.New("kms: invalid alias")
	ErrInvalidKeyUsage   = errors.New("kms: invalid key usage")
	ErrInvalidDesc       = errors.New("kms: invalid description")
	ErrPlaintextTooLong  = errors.New("kms: plaintext longer than 4096 bytes")
	ErrPlaintextEmpty    = errors.New("kms: plaintext is empty")
	ErrInvalidContext    = errors.New("kms: invalid encryption context")
	ErrInvalidCiphertext = errors.New("kms: invalid ciphertext")

	// State errors.
	ErrKeyNotFound   = errors.New("kms: key not found")
	ErrAliasExists   = errors.New("kms: alias already exists")
	ErrKeyDisabled   = errors.New("kms: key is disabled")
	ErrLimitExceeded = errors.New("kms: key limit exceeded")
	// ErrKeyStateNotSupported means the key's state forbids the operation
	// and is neither Disabled (ErrKeyDisabled) nor Deleted (ErrKeyNotFound):
	// Encrypt on a PendingDelete or Archived key, Decrypt on a PendingDelete
	// key. Tencent: ResourceUnavailable.CmkStateNotSupport.
	ErrKeyStateNotSupported = errors.New("kms: key state does not support the operation")

	// ErrDecrypt means the ciphertext is well formed but does not
	// authenticate: it was altered, or the encryption context differs.
	ErrDecrypt = errors.New("kms: decryption failed")

	// Availability errors, shared with package hsm.
	ErrBusy        = hsm.ErrBusy
	ErrUnavailable = hsm.ErrUnavailable

	// ErrInternal means the service found itself inconsistent or failed in
	// a way the caller cannot fix and a retry is unlikely to fix: the
	// metadata names a token object the HSM does not have, the store failed,
	// the HSM refused arguments the service built. It is logged at Error
	// level where it arises. Unlike ErrUnavailable it is not a transient
	// condition. The HTTP edge reports it as InternalError.
	ErrInternal = errors.New("kms: internal error")
)

// Limits of the API, as Tencent Cloud KMS documents them.
const (
	MaxPlaintext        = 4096 // bytes, after base64 decoding
	MaxContextChars     = 1024 // characters of the encryptionContext JSON
	MaxAliasChars       = 60
	MaxDescription      = 1024 // bytes
	DefaultKeyUsage     = "ENCRYPT_DECRYPT"
	LegacyKeyUsage      = "ENCRYPT/DECRYPT" // accepted by CreateKey, normalised to DefaultKeyUsage
	ReservedAliasPrefix = "kms-"            // aliases may not start with it (any case)
	DefaultKeyLimit     = 10000
	OriginTencentKMS    = "TENCENT_KMS"
	StateEnabled        = "Enabled"
	StateDisabled       = "Disabled"
	StatePendingDelete  = "PendingDelete"
	StateArchived       = "Archived"
	StateDeleted        = "Deleted"
)
