package kms

import (
	"context"

	"hsmkms/hsm"
	"hsmkms/store"
)

// HSM is what the domain needs from the hardware token. hsm/p11's *Token
// implements it; errors wrap the sentinels of package hsm.
//
// Implementations must be safe for concurrent use.
//
// Implementations keep no reference to the byte slices they are given
// (object ids, plaintexts, AAD) once a call returns: callers reuse them.
type HSM interface {
	// MACer computes and checks the MACs of the metadata (integrity.go).
	hsm.MACer
	// GenerateKey creates a non-extractable AES-256 token object whose
	// CKA_ID is objectID and whose CKA_LABEL is label.
	GenerateKey(ctx context.Context, objectID []byte, label string) error
	// Seal encrypts plaintext with AES-256-GCM under the object, binding
	// aad. It returns the 12-byte IV it used and ciphertext||tag.
	Seal(ctx context.Context, objectID, plaintext, aad []byte) (iv, sealed []byte, err error)
	// Open reverses Seal. A modified iv, sealed or aad gives hsm.ErrNotAuthentic.
	Open(ctx context.Context, objectID, iv, sealed, aad []byte) ([]byte, error)
	// DestroyKey destroys the token object; hsm.ErrKeyNotFound if absent.
	DestroyKey(ctx context.Context, objectID []byte) error
	// KeyIDs lists the CKA_ID of every key object this service made on the token.
	KeyIDs(ctx context.Context) ([][]byte, error)
	// Random returns n bytes from the token's random number generator.
	Random(ctx context.Context, n int) ([]byte, error)
}

// Store is what the domain needs from metadata persistence. store's *SQLite
// implements it.
type Store interface {
	AddPendingObject(ctx context.Context, p store.PendingObject) error
	PendingObjects(ctx context.Context) ([]store.PendingObject, error)
	DeletePendingObject(ctx context.Context, objectID []byte) error
	CreateKey(ctx context.Context, k store.Key) error
	GetKey(ctx context.Context, id string) (store.Key, error)
	ListKeys(ctx context.Context) ([]store.Key, error)
	CountKeys(ctx context.Context) (int, error)
	ObjectIDs(ctx context.Context) ([][]byte, error)
	// UpdateKey replaces a key's mutable metadata (alias, description,
	// state, deletion date, rotation settings); store.ErrNotFound,
	// store.ErrAliasExists.
	UpdateKey(ctx context.Context, k store.Key) error
	// UpdateKeys is UpdateKey for each of ks in order, in one transaction:
	// all are changed or none is.
	UpdateKeys(ctx context.Context, ks ...store.Key) error
	// AddVersion commits a new key version, deletes its pending object and
	// sets the key's LastRotatedAt, generation and MAC (those of k),
	// atomically; store.ErrNotFound, store.ErrStale.
	AddVersion(ctx context.Context, k store.Key, v store.Version) error
	// SetVersionMAC replaces the MAC of a key version (reseal).
	SetVersionMAC(ctx context.Context, keyID string, number uint32, mac []byte) error
	// SetPendingMAC replaces the MAC of an intent (reseal).
	SetPendingMAC(ctx context.Context, objectID, mac []byte) error
	// ReserveUsage durably raises a version's usage reservation to upTo
	// (never lowers it); store.ErrNotFound.
	ReserveUsage(ctx context.Context, keyID string, version uint32, upTo uint64) error

	CreateCredential(ctx context.Context, c store.Credential) error
	ListCredentials(ctx context.Context) ([]store.Credential, error)
	// UpdateCredential writes a credential's name, policy, enabled flag,
	// generation and MAC if the stored generation is lower;
	// store.ErrNotFound, store.ErrStale.
	UpdateCredential(ctx context.Context, c store.Credential) error
	DeleteCredential(ctx context.Context, secretID string) error
}
