package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"time"

	"hsmkms/httpapi"
	"hsmkms/store"
)

// What the nodes of a cluster share to refuse replays: the signature v1
// nonces and the TC3 signatures accepted with an unsigned action.

// nonceStore is the store side of shared legacy nonces (*store.Postgres).
type nonceStore interface {
	UseNonce(ctx context.Context, key []byte, expiry, now time.Time) (bool, error)
}

// sharedNonces adapts a nonceStore to httpapi.NonceStore.
type sharedNonces struct{ s nonceStore }

func (n sharedNonces) UseNonce(ctx context.Context, key string, expiry, now time.Time) (bool, error) {
	return n.s.UseNonce(ctx, []byte(key), expiry, now)
}

// signatureStore is the store side of shared TC3 signatures (*store.Postgres).
type signatureStore interface {
	PublishSignatures(ctx context.Context, node []byte, uses []store.SignatureUse) ([]store.SignatureUse, error)
	ClaimSignature(ctx context.Context, node []byte, use store.SignatureUse) (string, error)
	SignaturesSince(ctx context.Context, node []byte, cursor int64, limit int) ([]store.SignatureUse, int64, error)
}

// sharedSignatures adapts a signatureStore to httpapi.SignatureLedger for
// this process (a random node id, so that a node does not read back its
// own signatures). Signatures are stored as their 32 bytes.
type sharedSignatures struct {
	s    signatureStore
	node []byte
}

func newSharedSignatures(s signatureStore) sharedSignatures {
	node := make([]byte, 16)
	_, _ = rand.Read(node) // crypto/rand does not fail on Linux
	return sharedSignatures{s: s, node: node}
}

func toStoreUse(u httpapi.SignatureUse) (store.SignatureUse, error) {
	b, err := hex.DecodeString(u.Signature)
	if err != nil {
		return store.SignatureUse{}, fmt.Errorf("signature is not hex: %w", err)
	}
	return store.SignatureUse{Sig: b, Action: u.Action, Expiry: u.Expiry}, nil
}

func fromStoreUse(u store.SignatureUse) httpapi.SignatureUse {
	return httpapi.SignatureUse{Signature: hex.EncodeToString(u.Sig), Action: u.Action, Expiry: u.Expiry}
}

func (l sharedSignatures) PublishSignatures(ctx context.Context, uses []httpapi.SignatureUse) ([]httpapi.SignatureUse, error) {
	su := make([]store.SignatureUse, len(uses))
	for i, u := range uses {
		var err error
		if su[i], err = toStoreUse(u); err != nil {
			return nil, err
		}
	}
	conflicts, err := l.s.PublishSignatures(ctx, l.node, su)
	out := make([]httpapi.SignatureUse, len(conflicts))
	for i, c := range conflicts {
		out[i] = fromStoreUse(c)
	}
	return out, err
}

func (l sharedSignatures) ClaimSignature(ctx context.Context, use httpapi.SignatureUse) (string, error) {
	su, err := toStoreUse(use)
	if err != nil {
		return "", err
	}
	return l.s.ClaimSignature(ctx, l.node, su)
}

func (l sharedSignatures) SignaturesSince(ctx context.Context, cursor int64, limit int) ([]httpapi.SignatureUse, int64, error) {
	uses, next, err := l.s.SignaturesSince(ctx, l.node, cursor, limit)
	out := make([]httpapi.SignatureUse, len(uses))
	for i, u := range uses {
		out[i] = fromStoreUse(u)
	}
	return out, next, err
}
