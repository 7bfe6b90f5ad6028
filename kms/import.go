package kms

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"hsmkms/hsm"
	"hsmkms/store"
)

// Imported key material (BYOK).
//
// CreateKey with Type KeyTypeExternal makes a key of Origin EXTERNAL in
// state PendingImport: its metadata and the object id of its one version,
// but no token object. GetParametersForImport makes a fresh RSA-2048
// wrapping key pair in the token per call (intent, key pair, then one store
// transaction that records the parameters and deletes the intent) and
// returns its public half with a random import token. The store keeps only
// SHA-256 of the token, bound (under the metadata MAC) to the key, the
// wrapping algorithm, the wrapping key and the expiry (24 h).
// ImportKeyMaterial unwraps the material inside the token straight into
// the key's AES-256 object (intent first, like CreateKey), compares its key
// check value (computed in the token) with the one of the material first
// imported, and makes the key Enabled; the token is then used up and the
// wrapping key destroyed. The material's own expiry (ValidTo) and
// DeleteImportedKeyMaterial destroy the object and put the key back to
// PendingImport (intent first: the key is written PendingImport, then the
// object destroyed; Recover finishes either). Invariant: the token holds
// the object of an EXTERNAL key exactly when MaterialLoaded is true.

// Key types of CreateKey (Tencent's Type).
const (
	KeyTypeKMS      = 1 // the token generates the material
	KeyTypeExternal = 2 // EXTERNAL: the material is imported
)

// Origins and the state of an EXTERNAL key without material.
const (
	OriginExternal     = "EXTERNAL"
	StatePendingImport = "PendingImport"
)

// Wrapping algorithms and key spec of GetParametersForImport.
const (
	WrapRSAESPKCS1V15   = "RSAES_PKCS1_V1_5"
	WrapRSAESOAEPSHA1   = "RSAES_OAEP_SHA_1"
	WrapRSAESOAEPSHA256 = "RSAES_OAEP_SHA_256"
	WrappingKeySpecRSA  = "RSA_2048"
)

// Limits of key import.
const (
	// ImportParamsTTL is how long GetParametersForImport's answer is valid.
	ImportParamsTTL = 24 * time.Hour
	// MaxImportParamsPerKey caps the unexpired, unused parameters of one
	// key (each holds a wrapping key on the token).
	MaxImportParamsPerKey = 10
	// MaxValidTo is the latest ValidTo Tencent accepts (Unix seconds).
	MaxValidTo = 2147443200
	// importTokenBytes is the size of an import token before base64.
	importTokenBytes = 32
)

// Errors of key import. The HTTP edge maps each to Tencent's code.
var (
	ErrInvalidType             = errors.New("kms: invalid key type: want 1 (KMS) or 2 (EXTERNAL)")
	ErrNotExternalKey          = errors.New("kms: the key's material was not imported (Origin is not EXTERNAL)")
	ErrExternalCannotRotate    = errors.New("kms: a key with imported material cannot rotate")
	ErrInvalidWrapping         = errors.New("kms: invalid wrapping parameters: WrappingAlgorithm RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256, WrappingKeySpec RSA_2048")
	ErrWrappingUnsupported     = errors.New("kms: wrapping algorithm not supported")
	ErrImportTokenInvalid      = errors.New("kms: the ImportToken is not valid for this key (unknown, already used, or issued for another key)")
	ErrImportTokenExpired      = errors.New("kms: the ImportToken has expired; call GetParametersForImport again")
	ErrDecryptMaterial         = errors.New("kms: the EncryptedKeyMaterial does not decrypt under the wrapping key to a 256-bit key")
	ErrMaterialNotMatch        = errors.New("kms: the key material differs from the material imported before")
	ErrInvalidValidTo          = errors.New("kms: invalid ValidTo: want 0 (never) or a future Unix time of at most 2147443200")
	ErrTooManyImportParameters = errors.New("kms: too many unused import parameters for this key; use or let expire the ones issued")
)

// ImportHSM is what key import needs of the token beyond HSM; hsm/p11's
// *Token implements it. Errors wrap the sentinels of package hsm.
type ImportHSM interface {
	// OAEPSupported: nil if the module unwraps RSAES-OAEP with h.
	OAEPSupported(ctx context.Context, h hsm.OAEPHash) error
	// GenerateWrappingKey makes an RSA-2048 key pair whose private half
	// (unwrap only) is the token object objectID; it returns the public
	// half as DER.
	GenerateWrappingKey(ctx context.Context, objectID []byte, label string) ([]byte, error)
	// ImportKey unwraps wrapped into an AES-256 CMK object objectID
	// (persist) or a throwaway session object, and returns its key check
	// value. hsm.ErrNotAuthentic: the material is wrong.
	ImportKey(ctx context.Context, wrappingID []byte, h hsm.OAEPHash, wrapped, objectID []byte, label string, persist bool) ([]byte, error)
	// DestroyWrappingKey destroys a wrapping key; hsm.ErrKeyNotFound if absent.
	DestroyWrappingKey(ctx context.Context, objectID []byte) error
	// WrappingKeyIDs lists the wrapping keys on the token.
	WrappingKeyIDs(ctx context.Context) ([][]byte, error)
}

// ImportStore is what key import needs of the store beyond Store; both
// stores implement it.
type ImportStore interface {
	AddImportParams(ctx context.Context, p store.ImportParams) error
	GetImportParams(ctx context.Context, tokenHash []byte) (store.ImportParams, error)
	ListImportParams(ctx context.Context) ([]store.ImportParams, error)
	DeleteImportParams(ctx context.Context, tokenHash []byte) error
	SetImportParamsMAC(ctx context.Context, tokenHash, mac []byte) error
}

// importer returns the HSM and store with import support, or an error if
// either lacks it.
func (s *Service) importer() (ImportHSM, ImportStore, error) {
	h, ok := s.hsm.(ImportHSM)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the HSM does not support key import", ErrWrappingUnsupported)
	}
	st, ok := s.store.(ImportStore)
	if !ok {
		return nil, nil, fmt.Errorf("%w: the store does not support key import", ErrWrappingUnsupported)
	}
	return h, st, nil
}

// KindImport names import parameters in IntegrityFailure.
const KindImport = "import-parameters"

func importMsg(p store.ImportParams) []byte {
	return newMACMsg(KindImport).bytes(p.TokenHash).str(p.KeyID).str(p.Algorithm).bytes(p.WrappingObjectID).
		time(p.CreatedAt).time(p.ValidTo).b
}

// materialMsgSuffix extends keyMsg for EXTERNAL keys (only: the encoding
// of every other key is unchanged).
func materialMsgSuffix(m *macMsg, r store.Key) {
	if r.Origin != OriginExternal {
		return
	}
	m.str("material").time(r.MaterialValidTo).bytes(r.MaterialCheck).flag(r.MaterialLoaded)
}

// materialAbsent reports whether r is an EXTERNAL key whose material is not
// on the token: its version object must not exist (Recover destroys it).
func materialAbsent(r store.Key) bool {
	return r.Origin == OriginExternal && !r.MaterialLoaded
}

// checkHash is what the store keeps of a key check value: SHA-256 over a
// domain label, the key id and the KCV.
func checkHash(keyID string, kcv []byte) []byte {
	h := sha256.New()
	h.Write([]byte("hsmkms import key check value v1\x00"))
	h.Write([]byte(keyID))
	h.Write([]byte{0})
	h.Write(kcv)
	return h.Sum(nil)
}

func oaepHash(alg string) (hsm.OAEPHash, error) {
	switch alg {
	case WrapRSAESOAEPSHA1:
		return hsm.OAEPSHA1, nil
	case WrapRSAESOAEPSHA256:
		return hsm.OAEPSHA256, nil
	case WrapRSAESPKCS1V15:
		return 0, fmt.Errorf("%w: %s is refused: unwrapping PKCS#1 v1.5 is a padding oracle (Bleichenbacher); use RSAES_OAEP_SHA_256 or RSAES_OAEP_SHA_1", ErrWrappingUnsupported, alg)
	}
	return 0, fmt.Errorf("%w: unknown WrappingAlgorithm %q", ErrInvalidWrapping, alg)
}

// ---------------------------------------------------------------------------
// CreateKey Type=2

// createExternal is CreateKey for Type KeyTypeExternal: no token object is
// made, so no intent is needed; the key is committed PendingImport with the
// object id its material will have.
func (s *Service) createExternal(ctx context.Context, in CreateKeyInput, usage string) (KeyMetadata, error) {
	if err := s.reserve(in.Alias); err != nil {
		return KeyMetadata{}, err
	}
	published := false
	defer func() {
		if !published {
			s.unreserve(in.Alias)
		}
	}()
	keyID, objectID, err := newKeyIDs(ctx, in.Tags)
	if err != nil {
		return KeyMetadata{}, err
	}
	now := s.now().UTC()
	rec := store.Key{
		ID: keyID, Alias: in.Alias, Description: in.Description, Usage: usage,
		State: StatePendingImport, Origin: OriginExternal, CreatedAt: now,
		Versions: []store.Version{{Number: 1, ObjectID: objectID, CreatedAt: now}},
		Gen:      1,
	}
	rec.Tags, _ = applyTags(nil, in.Tags, nil) // validated by CreateKey
	if err := s.sealKey(ctx, &rec); err != nil {
		return KeyMetadata{}, err
	}
	if err := s.store.CreateKey(ctx, rec); err != nil {
		if errors.Is(err, store.ErrAliasExists) {
			return KeyMetadata{}, fmt.Errorf("%w: %q", ErrAliasExists, in.Alias)
		}
		return KeyMetadata{}, storeErr("create key", err)
	}
	k, err := newKeyEntry(rec, nil)
	if err != nil {
		return KeyMetadata{}, fmt.Errorf("%w: create key: %w", ErrInternal, err)
	}
	s.publish(k)
	published = true
	s.log.Info("kms: key created, awaiting imported material", "key_id", rec.ID, "alias", in.Alias)
	return k.meta, nil
}

// checkExternal refuses a key that is not usable (checkUsable's errors) or
// not of Origin EXTERNAL (ErrNotExternalKey naming keyID): the check every
// action on imported material starts with.
func checkExternal(k *keyEntry, keyID string) error {
	if err := checkUsable(k); err != nil {
		return err
	}
	if k.meta.Origin != OriginExternal {
		return fmt.Errorf("%w: %s", ErrNotExternalKey, keyID)
	}
	return nil
}

// ---------------------------------------------------------------------------
// GetParametersForImport

// ImportParameters is GetParametersForImport's answer.
type ImportParameters struct {
	KeyID       string
	ImportToken string    // base64; give it to ImportKeyMaterial, once
	PublicKey   []byte    // DER (X.509 SubjectPublicKeyInfo) of the RSA-2048 wrapping key
	ValidTo     time.Time // after it, the token and the public key are refused
}

// GetParametersForImport makes a fresh RSA-2048 wrapping key in the token
// for importing material into the EXTERNAL key keyID, wrapped with
// algorithm (RSAES_OAEP_SHA_1 or RSAES_OAEP_SHA_256; RSAES_PKCS1_V1_5 is
// refused, see oaepHash), and returns its public half with an import
// token valid for ImportParamsTTL.
//
// Errors: ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound,
// ErrNotExternalKey, ErrInvalidWrapping, ErrWrappingUnsupported (also when
// the module cannot unwrap the algorithm), ErrKeyStateNotSupported
// (PendingDelete), ErrTooManyImportParameters; ErrBusy, ErrUnavailable,
// ErrInternal.
func (s *Service) GetParametersForImport(ctx context.Context, keyID, algorithm, keySpec string) (ImportParameters, error) {
	id, ok := parseKeyID(keyID)
	if !ok {
		return ImportParameters{}, ErrInvalidKeyID
	}
	if err := authorize(ctx, "kms:GetParametersForImport", keyID); err != nil {
		return ImportParameters{}, err
	}
	if keySpec != WrappingKeySpecRSA {
		return ImportParameters{}, fmt.Errorf("%w: unknown WrappingKeySpec %q", ErrInvalidWrapping, keySpec)
	}
	h, err := oaepHash(algorithm)
	if err != nil {
		return ImportParameters{}, err
	}
	ih, ist, err := s.importer()
	if err != nil {
		return ImportParameters{}, err
	}
	k, err := s.lookupCtx(ctx, id) // read-through: made on another node a moment ago
	if err != nil {
		return ImportParameters{}, err
	}
	if k == nil || k.meta.KeyState == StateDeleted {
		return ImportParameters{}, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	if err := checkExternal(k, keyID); err != nil {
		return ImportParameters{}, err
	}
	if k.meta.KeyState == StatePendingDelete {
		return ImportParameters{}, notSupported(k)
	}
	if err := ih.OAEPSupported(ctx, h); err != nil {
		if errors.Is(err, hsm.ErrMisconfigured) {
			return ImportParameters{}, fmt.Errorf("%w: %s: this HSM cannot unwrap it (%v)", ErrWrappingUnsupported, algorithm, err)
		}
		return ImportParameters{}, s.hsmErr(s.log, "get parameters for import", err)
	}

	s.recoverMu.RLock()
	defer s.recoverMu.RUnlock()
	now := s.now().UTC()
	all, err := ist.ListImportParams(ctx)
	if err != nil {
		return ImportParameters{}, storeErr("get parameters for import", err)
	}
	open := 0
	for _, p := range all {
		if p.KeyID == keyID && p.ValidTo.After(now) {
			open++
		}
	}
	if open >= MaxImportParamsPerKey {
		return ImportParameters{}, fmt.Errorf("%w: %d", ErrTooManyImportParameters, open)
	}

	token := make([]byte, importTokenBytes)
	wrapID := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return ImportParameters{}, fmt.Errorf("%w: import token: %w", ErrInternal, err)
	}
	if _, err := rand.Read(wrapID); err != nil {
		return ImportParameters{}, fmt.Errorf("%w: wrapping object id: %w", ErrInternal, err)
	}
	log := s.log.With("key_id", keyID, "object_id", fmt.Sprintf("%x", wrapID))
	// 1. Durable intent: a crash from here on leaves no wrapping key behind.
	if err := s.addIntent(ctx, store.PendingObject{ObjectID: wrapID, KeyID: keyID, Version: 1, CreatedAt: now}); err != nil {
		return ImportParameters{}, storeErr("get parameters for import", err)
	}
	s.fault("import:params-intent")
	// 2. The wrapping key pair.
	pub, err := ih.GenerateWrappingKey(ctx, wrapID, keyID)
	if err != nil {
		s.rollbackWrapping(ctx, log, wrapID)
		return ImportParameters{}, s.hsmErr(log, "get parameters for import", err)
	}
	s.fault("import:wrapping-generated")
	// 3. Commit (deletes the intent).
	sum := sha256.Sum256(token)
	p := store.ImportParams{TokenHash: sum[:], KeyID: keyID, Algorithm: algorithm, WrappingObjectID: wrapID,
		CreatedAt: now, ValidTo: now.Add(ImportParamsTTL)}
	if p.MAC, err = s.mac(ctx, importMsg(p)); err != nil {
		s.rollbackWrapping(ctx, log, wrapID)
		return ImportParameters{}, err
	}
	if err := ist.AddImportParams(ctx, p); err != nil {
		// The commit may have happened: the intent is left for Recover,
		// which destroys the wrapping key (the token is then refused).
		log.Error("kms: get parameters for import: commit failed; the intent is left for Recover", "err", err)
		return ImportParameters{}, storeErr("get parameters for import", err)
	}
	log.Info("kms: import parameters issued", "algorithm", algorithm, "valid_to", p.ValidTo)
	return ImportParameters{KeyID: keyID, ImportToken: base64.StdEncoding.EncodeToString(token), PublicKey: pub, ValidTo: p.ValidTo}, nil
}

// rollbackWrapping destroys an uncommitted wrapping key and deletes its
// intent (best effort; Recover retries what is left).
func (s *Service) rollbackWrapping(ctx context.Context, log *slog.Logger, wrapID []byte) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if err := s.destroyWrapping(cctx, wrapID); err != nil {
		log.Error("kms: rollback: cannot destroy the wrapping key; the intent is kept for Recover", "err", err)
		return
	}
	if err := s.store.DeletePendingObject(cctx, wrapID); err != nil {
		log.Error("kms: rollback: cannot delete the intent; Recover will", "err", err)
	}
}

// destroyWrapping destroys the wrapping key objectID if the HSM has key
// import; an absent one is fine. Recover calls it for every intent it
// rolls back (an intent may name a wrapping key).
func (s *Service) destroyWrapping(ctx context.Context, objectID []byte) error {
	ih, ok := s.hsm.(ImportHSM)
	if !ok {
		return nil
	}
	if err := ih.DestroyWrappingKey(ctx, objectID); err != nil && !errors.Is(err, hsm.ErrKeyNotFound) {
		return err
	}
	return nil
}

// ResealImportParams accepts the stored import parameters whose wrapping
// key's object id is wrapIDHex (hex, as IntegrityFailure.ID names them),
// after an administrator checked them: their MAC is computed anew over the
// row as stored. Requires kms-admin:Reseal.
func (s *Service) ResealImportParams(ctx context.Context, wrapIDHex string) error {
	if err := authorize(ctx, actReseal, "*"); err != nil {
		return err
	}
	wrapID, err := hex.DecodeString(wrapIDHex)
	if err != nil || len(wrapID) == 0 {
		return fmt.Errorf("kms: reseal import parameters: %q is not a hex object id", wrapIDHex)
	}
	if reservedObject(wrapID) {
		return fmt.Errorf("kms: reseal import parameters: %x is a reserved token object; delete the row instead", wrapID)
	}
	_, ist, err := s.importer()
	if err != nil {
		return err
	}
	all, err := ist.ListImportParams(ctx)
	if err != nil {
		return storeErr("reseal import parameters", err)
	}
	for _, p := range all {
		if !bytes.Equal(p.WrappingObjectID, wrapID) {
			continue
		}
		m, err := s.mac(ctx, importMsg(p))
		if err != nil {
			return err
		}
		if err := ist.SetImportParamsMAC(ctx, p.TokenHash, m); err != nil {
			return storeErr("reseal import parameters", err)
		}
		s.clearIntegrity(KindImport, wrapIDHex)
		s.log.Warn("kms: import parameters resealed by an administrator", "object_id", wrapIDHex, "key_id", p.KeyID)
		return nil
	}
	return fmt.Errorf("kms: reseal import parameters: none with wrapping object id %s", wrapIDHex)
}
