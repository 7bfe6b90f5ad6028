package kms

import (
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
	// VersionUsageLimit is the number of encryptions (Encrypt,
	// GenerateDataKey, ReEncrypt) allowed under one key version; the next
	// one is served by a new version, made automatically. 0 means
	// DefaultVersionUsageLimit; at most 2^62.
	VersionUsageLimit uint64
	// UsageBatch is how many encryptions one durable usage reservation
	// covers (one store write per batch); 0 means DefaultUsageBatch. It is
	// capped by VersionUsageLimit.
	UsageBatch uint64
	// MaintenanceInterval is how often RunMaintenance purges keys whose
	// deletion window ended and rotates keys whose rotation is due; 0 means
	// one minute.
	MaintenanceInterval time.Duration
	// StaleAfter bounds, on a shared store (see SharedStore), how long
	// Encrypt, Decrypt, GenerateDataKey and ReEncrypt keep serving from
	// the cache while it cannot be confirmed current (the store is
	// unreachable); 0 means DefaultStaleAfter.
	StaleAfter time.Duration
	// ResyncInterval is, on a shared store, how often every key and
	// credential is re-read in case a change notification was lost (the
	// TTL of the caches); 0 means DefaultResyncInterval.
	ResyncInterval time.Duration
	// FaultPoint, if set, is called at named points of CreateKey, RotateKey
	// and the purge ("create:intent", "create:generated",
	// "rotate:intent", "rotate:generated", "purge:destroyed-one",
	// "purge:destroyed-all"; key import: "import:params-intent",
	// "import:wrapping-generated", "import:intent", "import:unwrapped",
	// "import:params-deleted", "unload:intent", "unload:written"). Crash tests use it to kill the process at a
	// chosen point; production leaves it nil.
	FaultPoint func(point string)
	// OnIntegrityFailure, if set, is called (synchronously, without locks
	// held) for every stored row newly found failing its integrity check
	// (see integrity.go); kmsd records it in the audit trail.
	OnIntegrityFailure func(IntegrityFailure)
	// Region is the region the service reports (GetRegions) and names in
	// resource names (qcs::kms:<region>:uin/<uin>:key/<keyId>); "" means
	// DefaultRegion. See status.go.
	Region string
}

// CreateKeyInput is the request of CreateKey.
type CreateKeyInput struct {
	Alias       string // required, 1-60 of [A-Za-z0-9_-], first a letter or digit, unique
	Description string // optional, at most 1024 bytes
	KeyUsage    string // "" or "ENCRYPT_DECRYPT", or an asymmetric usage (asym.go)
	// Type is 0 or KeyTypeKMS (the token generates the material) or
	// KeyTypeExternal (Origin EXTERNAL, state PendingImport until
	// ImportKeyMaterial; import.go).
	Type int
	// Tags, if any, are set on the new key (tags.go): the caller also
	// needs tag:TagResources on it; *TagError if they break the limits.
	Tags []Tag
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
	DeletionDate   time.Time // scheduled deletion (PendingDelete) or purge time (Deleted); else zero
	CurrentVersion uint32

	KeyRotationEnabled bool
	RotateDays         uint32    // rotation period when KeyRotationEnabled
	LastRotateTime     time.Time // zero if the key never rotated
	NextRotateTime     time.Time // zero unless KeyRotationEnabled

	ValidTo time.Time // Origin EXTERNAL: when the imported material expires; zero: never
}

// EncryptInput is the request of Encrypt. Encrypt reads Plaintext only
// while it runs and keeps no reference to it: callers may clear and reuse
// the buffer once it returns.
type EncryptInput struct {
	KeyID             string
	Plaintext         []byte // raw bytes, 1..MaxPlaintext
	EncryptionContext string // "" or a JSON object of strings, <= MaxContextChars
}

// EncryptResult is the response of Encrypt.
type EncryptResult struct {
	KeyID      string
	KeyVersion uint32
	Ciphertext []byte // the binary envelope; CiphertextBlob is its wire form
}

// CiphertextBlob returns the wire form of the ciphertext: the standard,
// padded base64 of Ciphertext (what encoding/json makes of a []byte, so a
// reply can carry Ciphertext itself and skip this copy).
func (r EncryptResult) CiphertextBlob() string { return encodeBlob(r.Ciphertext) }

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

// RecoveryReport is what Recover found and did.
type RecoveryReport struct {
	// Committed counts intents whose key had been committed (the crash
	// came after store.CreateKey): the intent was deleted.
	Committed int
	// RolledBack lists the object ids of intents whose key was never
	// committed: the token object was destroyed (or was already absent)
	// and the intent deleted.
	RolledBack [][]byte
	// Unresolved lists the object ids of intents Recover could not resolve
	// now (HSM or store failure); they are kept for the next run.
	Unresolved [][]byte
	// Orphans lists token objects made by this service that no version of
	// a key that is not Deleted and no intent names (an object of a Deleted
	// key outlived its purge). They are NOT destroyed: the store may be
	// being restored from a backup that names them. An operator decides.
	Orphans [][]byte
	// Missing lists key versions (of keys not Deleted) whose token object
	// is absent: ciphertexts under them cannot be decrypted.
	Missing []MissingObject
}

// MissingObject names a key version whose token object is absent.
type MissingObject struct {
	KeyID    string
	Version  uint32
	ObjectID []byte
}
