package httpapi

import (
	"context"
	"strconv"

	"hsmkms/kms"
)

// The key management actions of the legacy API, with the field shapes the
// legacy SDKs (Python, Java, C++) read. One domain implementation serves
// them and their API 3.0 equivalents; GetKeyAttributes is authorised as
// kms:DescribeKey, SetKeyAttributes as kms:UpdateAlias and ListKey as
// kms:ListKeys.

type legacyKeyIDReply struct {
	legacyReply
	KeyID string `json:"keyId"`
}

type legacyGenerateDataKeyReply struct {
	legacyReply
	KeyID          string `json:"keyId"`
	Plaintext      []byte `json:"plaintext"`
	CiphertextBlob []byte `json:"ciphertextBlob"`
}

func (r legacyGenerateDataKeyReply) wipe() { clear(r.Plaintext) }

type legacyListKeyReply struct {
	legacyReply
	TotalCount int              `json:"totalCount"`
	Keys       []legacyKeyIDRef `json:"keys"`
}

type legacyKeyIDRef struct {
	KeyID string `json:"keyId"`
}

type legacyScheduleReply struct {
	legacyReply
	KeyID        string `json:"keyId"`
	DeletionDate int64  `json:"deletionDate"`
}

// legacyInt parses an optional non-negative integer parameter; absent is
// def.
func (p params) legacyInt(name string, def, maxv int) (int, error) {
	v := p.get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxv {
		return 0, legacyErrorf(codeInvalidParameter, "invalid %s: want an integer from 0 to %d", name, maxv)
	}
	return n, nil
}

// legacyListKey serves the legacy ListKey.
func (s *Server) legacyListKey(ctx context.Context, p params, ok legacyReply) (any, error) {
	offset, err := p.legacyInt("offset", 0, 1<<31)
	if err != nil {
		return nil, err
	}
	limit, err := p.legacyInt("limit", defaultListLimit, maxListLimit)
	if err != nil {
		return nil, err
	}
	if limit == 0 {
		limit = defaultListLimit
	}
	res, err := s.kms.ListKeys(ctx, kms.ListKeysInput{Offset: offset, Limit: limit})
	if err != nil {
		return nil, err
	}
	out := legacyListKeyReply{legacyReply: ok, TotalCount: res.TotalCount, Keys: make([]legacyKeyIDRef, len(res.Keys))}
	for i, k := range res.Keys {
		out.Keys[i] = legacyKeyIDRef{KeyID: k.KeyID}
	}
	return out, nil
}

// legacyKeyID returns the keyId parameter every legacy action but
// CreateKey and ListKey requires, noted for the audit trail.
func legacyKeyID(ctx context.Context, p params) (string, error) {
	keyID, err := p.required("keyId")
	if err != nil {
		return "", err
	}
	noteKey(ctx, keyID, 0)
	return keyID, nil
}

// legacyGenerateDataKey serves the legacy GenerateDataKey.
func (s *Server) legacyGenerateDataKey(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	// The Java SDK always sends numberOfBytes, 0 when the caller gave
	// none: 0 means "not given".
	n, err := p.legacyInt("numberOfBytes", 0, kms.MaxDataKeyBytes)
	if err != nil {
		return nil, err
	}
	res, err := s.kms.GenerateDataKey(ctx, kms.GenerateDataKeyInput{KeyID: keyID, KeySpec: p.get("keySpec"), NumberOfBytes: n, EncryptionContext: p.get("encryptionContext")})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return legacyGenerateDataKeyReply{legacyReply: ok, KeyID: res.KeyID, Plaintext: wireBytes(res.Plaintext), CiphertextBlob: res.Ciphertext}, nil
}

// legacyGetKeyAttributes serves the legacy GetKeyAttributes.
func (s *Server) legacyGetKeyAttributes(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.DescribeKey(ctx, keyID)
	if err != nil {
		return nil, err
	}
	return legacyCreateKeyReply{legacyReply: ok, KeyMetadata: toLegacyMetadata(md)}, nil
}

// legacySetKeyAttributes serves the legacy SetKeyAttributes.
func (s *Server) legacySetKeyAttributes(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	alias, err := p.required("alias")
	if err != nil {
		return nil, err
	}
	if err := s.kms.UpdateAlias(ctx, keyID, alias); err != nil {
		return nil, err
	}
	return ok, nil
}

// legacyEnableKey serves the legacy EnableKey.
func (s *Server) legacyEnableKey(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := s.kms.EnableKey(ctx, keyID); err != nil {
		return nil, err
	}
	return ok, nil
}

// legacyDisableKey serves the legacy DisableKey.
func (s *Server) legacyDisableKey(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	if err := s.kms.DisableKey(ctx, keyID); err != nil {
		return nil, err
	}
	return ok, nil
}

// legacyScheduleKeyDeletion serves the legacy ScheduleKeyDeletion.
func (s *Server) legacyScheduleKeyDeletion(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	if _, err := p.required("pendingWindowInDays"); err != nil {
		return nil, err
	}
	days, err := p.legacyInt("pendingWindowInDays", 0, 1<<16)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.ScheduleKeyDeletion(ctx, keyID, days)
	if err != nil {
		return nil, err
	}
	return legacyScheduleReply{legacyReply: ok, KeyID: md.KeyID, DeletionDate: md.DeletionDate.Unix()}, nil
}

// legacyCancelKeyDeletion serves the legacy CancelKeyDeletion.
func (s *Server) legacyCancelKeyDeletion(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := legacyKeyID(ctx, p)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.CancelKeyDeletion(ctx, keyID)
	if err != nil {
		return nil, err
	}
	return legacyKeyIDReply{legacyReply: ok, KeyID: md.KeyID}, nil
}
