// Package store persists key metadata: keys, their versions and the token
// object that holds each version, plus the intent log that makes key creation
// crash-safe. Key material never passes through this package.
//
// The default implementation is an embedded SQLite database (modernc.org/sqlite,
// pure Go) opened with Open. Several kmsd nodes share a PostgreSQL database
// instead, opened with OpenPostgres (postgres.go), which implements the same
// contract plus change notifications, cross-node locks and usage blocks.
// Both schemas are versioned and migrated forward on open.
//
// # Errors
//
// Methods return ErrNotFound when the addressed key does not exist,
// ErrAliasExists when a unique alias is taken, ErrKeyExists when a key ID
// is already stored and ErrStale when a conditional write finds the row at
// a generation not older than the one written.
//
// # Authenticated rows
//
// Keys, key versions, credentials, intents and audit anchors carry a MAC
// (and keys and credentials a generation) that the service computes inside
// the HSM (kms/integrity.go); the store keeps them as given and checks
// nothing but that generations never go down. Open returns ErrSchemaTooNew for a database written by a
// newer release. Errors wrap these sentinels, so test them with errors.Is.
// Other errors are invalid arguments, I/O or database failures and are not
// classified.
//
// # Concurrency
//
// A *SQLite or *Postgres is safe for concurrent use by multiple goroutines.
package store

import (
	"errors"
	"time"
)

// Sentinel errors.
var (
	// ErrNotFound: the addressed key does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrAliasExists: the alias is held by another key that is not Deleted.
	ErrAliasExists = errors.New("store: alias already exists")
	// ErrKeyExists: a key with the same ID is already stored (in any state).
	ErrKeyExists = errors.New("store: key already exists")
	// ErrSchemaTooNew: the database schema version is newer than this code
	// knows; the database was written by a newer release and is left as is.
	ErrSchemaTooNew = errors.New("store: database schema is newer than this release supports")
	// ErrStale: a conditional update found the row at a generation not
	// older than the one written (another writer changed it meanwhile, or
	// the caller's copy is old). Nothing was changed.
	ErrStale = errors.New("store: row changed meanwhile (its generation is not older than the one written)")
)

// Key is the metadata of one customer master key (CMK).
type Key struct {
	ID          string // UUID, lower case, canonical 8-4-4-4-12 form
	Alias       string
	Description string
	Usage       string // e.g. "ENCRYPT_DECRYPT"
	State       string // "Enabled", "Disabled", "PendingDelete", "Archived", "Deleted"
	Origin      string // "TENCENT_KMS"
	CreatedAt   time.Time
	// DeletionDate is the scheduled deletion time (PendingDelete) or the
	// time the key was purged (Deleted); zero otherwise.
	DeletionDate time.Time
	// RotationEnabled, RotateDays and LastRotatedAt describe automatic
	// rotation: when enabled, a new version is due RotateDays after
	// LastRotatedAt (or CreatedAt if the key never rotated). LastRotatedAt
	// is zero until the first rotation; AddVersion sets it.
	RotationEnabled bool
	RotateDays      uint32
	LastRotatedAt   time.Time
	// PublicKey is the DER SubjectPublicKeyInfo of an asymmetric key (its
	// private half is the token object of version 1); nil for a symmetric
	// key. Immutable once stored (UpdateKey leaves it as it is).
	PublicKey []byte
	// Versions in ascending order of Number; never empty for a stored key.
	Versions []Version
	// Tags are the key's resource tags, in ascending order of Key, keys
	// distinct (see sqlite_tags.go). CreateKey and UpdateKey write them;
	// GetKey and ListKeys read them. nil and empty are the same.
	Tags []Tag
	// Gen is the row's generation: every change writes a higher one
	// (UpdateKey and AddVersion refuse to write a generation that is not
	// higher than the stored one, ErrStale), so a row never goes back.
	Gen uint64
	// MAC authenticates the row (the service computes it inside the HSM
	// over a canonical encoding that includes ID and Gen); nil for a row
	// written before MACs existed. The store keeps it as given.
	MAC []byte

	// Imported key material (Origin "EXTERNAL" only; zero otherwise).
	// MaterialValidTo is when the imported material expires (zero:
	// never); MaterialCheck is a hash of the key check value of the
	// material first imported (nil until then), so that only the same
	// material can be imported again; MaterialLoaded says whether the
	// material is on the token now.
	MaterialValidTo time.Time
	MaterialCheck   []byte
	MaterialLoaded  bool
}

// ImportParams is one answer of GetParametersForImport: a wrapping key on
// the token and the import token bound to it, usable once, until ValidTo.
type ImportParams struct {
	TokenHash        []byte // SHA-256 of the import token (32 bytes); the token itself is never stored
	KeyID            string
	Algorithm        string // "RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"
	WrappingObjectID []byte // CKA_ID of the wrapping key's private half
	CreatedAt        time.Time
	ValidTo          time.Time
	MAC              []byte // authenticates the row (see Key.MAC)
}

// Version is one generation of a key's material: a distinct token object.
type Version struct {
	Number    uint32 // 1, 2, 3...
	ObjectID  []byte // CKA_ID of the token object holding the material
	CreatedAt time.Time
	// UsageReserved is the durable high-water mark of encryptions reserved
	// under this version (see ReserveUsage): the service never performs
	// more encryptions than it has reserved, so this is an upper bound of
	// the real count. At most 2^63-1.
	UsageReserved uint64
	// MAC authenticates the version's immutable fields (see Key.MAC); it
	// does not cover UsageReserved, a high-water mark raised by every node.
	MAC []byte
}

// PendingObject records a token object that is about to be created (or was
// created) but whose key metadata is not yet committed. A crash between the
// two leaves this row behind; the service resolves it at the next start.
type PendingObject struct {
	ObjectID  []byte
	KeyID     string
	Version   uint32
	CreatedAt time.Time
	MAC       []byte // authenticates the intent (see Key.MAC); nil if written before MACs existed
}
