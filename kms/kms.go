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
	// and no more specific error applies: e.g. Encrypt or Decrypt on a
	// PendingDelete key, EnableKey on an Archived key. Tencent:
	// ResourceUnavailable.CmkStateNotSupport.
	ErrKeyStateNotSupported = errors.New("kms: key state does not support the operation")
	// ErrKeyArchived: the key is Archived, which allows Decrypt but not
	// Encrypt, GenerateDataKey or ReEncrypt to it. Tencent:
	// ResourceUnavailable.CmkArchived.
	ErrKeyArchived = errors.New("kms: key is archived")
	// ErrKeyShouldBeDisabled: only a Disabled key can be scheduled for
	// deletion. Tencent: ResourceUnavailable.CmkShouldBeDisabled.
	ErrKeyShouldBeDisabled = errors.New("kms: key must be disabled first")
	// ErrKeyNotPendingDelete: CancelKeyDeletion on a key that is not
	// PendingDelete. Tencent: ResourceUnavailable.CmkNotPendingDelete.
	ErrKeyNotPendingDelete = errors.New("kms: key is not pending deletion")
	// ErrUsageLimit: the key's current version reached the usage limit and
	// no new version could be made; nothing was encrypted. It wraps the
	// cause of the failed rotation.
	ErrUsageLimit = errors.New("kms: key version usage limit reached and no new version could be created")

	// More input errors.
	ErrInvalidPendingWindow = errors.New("kms: invalid pending window: want 7 to 30 days")
	ErrInvalidRotateDays    = errors.New("kms: invalid rotate days: want 7 to 365")
	ErrInvalidNumberOfBytes = errors.New("kms: invalid number of bytes: want 1 to 1024")
	ErrInvalidKeySpec       = errors.New("kms: invalid key spec: want AES_128 or AES_256")
	ErrTooManyKeys          = errors.New("kms: too many key ids: at most 100")
	ErrDuplicateKeyID       = errors.New("kms: duplicate key id")

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

	MinPendingWindowDays = 7
	MaxPendingWindowDays = 30
	MinRotateDays        = 7
	MaxRotateDays        = 365
	DefaultRotateDays    = 365
	MaxDataKeyBytes      = 1024 // GenerateDataKey and GenerateRandom
	MaxBatchKeys         = 100  // DescribeKeys, EnableKeys, DisableKeys

	// DefaultVersionUsageLimit is the number of encryptions allowed under
	// one key version before a new version is made: 2^30, well under the
	// 2^32 bound NIST SP 800-38D sets for random 96-bit GCM IVs.
	DefaultVersionUsageLimit = 1 << 30
	// DefaultUsageBatch is how many encryptions one durable reservation
	// covers; a crash over-counts by at most this much.
	DefaultUsageBatch = 4096
)
