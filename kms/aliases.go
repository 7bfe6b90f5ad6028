package kms

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"hsmkms/store"
)

// Aliases as the AWS KMS API addresses them (httpapi/aws*.go). A key has
// exactly one alias, its Tencent alias; the AWS alias "alias/<name>" is the
// key whose alias is <name>. Keys made without a name (the AWS CreateKey
// takes none) and keys whose name was deleted hold a placeholder alias,
// "key-" and 32 lower-case hex digits, which the AWS API may replace.

// ErrKeyHasAlias: the key already has an alias that is not a placeholder;
// a key has one alias only, so a second one is refused.
var ErrKeyHasAlias = errors.New("kms: the key already has an alias")

const placeholderPrefix = "key-"

// NewPlaceholderAlias returns a fresh placeholder alias.
func NewPlaceholderAlias() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read does not fail on supported platforms
	return placeholderPrefix + hex.EncodeToString(b[:])
}

// IsPlaceholderAlias reports whether a is a placeholder alias.
func IsPlaceholderAlias(a string) bool {
	if len(a) != len(placeholderPrefix)+32 || a[:len(placeholderPrefix)] != placeholderPrefix {
		return false
	}
	for i := len(placeholderPrefix); i < len(a); i++ {
		if _, ok := lowerHex(a[i]); !ok {
			return false
		}
	}
	return true
}

// KeyIDForAlias returns the id of the key (not Deleted) whose alias is
// alias (compared case-sensitively), or ErrKeyNotFound. It authorises
// nothing: the action then run on the key is authorised on its id.
func (s *Service) KeyIDForAlias(alias string) (string, error) {
	s.mu.RLock()
	id, ok := s.aliases[alias]
	s.mu.RUnlock()
	if !ok {
		return "", ErrKeyNotFound
	}
	return id.String(), nil
}

// SetAlias gives keyID the alias, authorising action (kms:CreateAlias,
// kms:UpdateAlias or kms:DeleteAlias) on the key. Unless replace is set,
// a key whose alias is not a placeholder keeps it: ErrKeyHasAlias. Errors
// are UpdateAlias's and ErrKeyHasAlias.
func (s *Service) SetAlias(ctx context.Context, action, keyID, alias string, replace bool) error {
	var replaceable func(string) bool
	if !replace {
		replaceable = IsPlaceholderAlias
	}
	return s.setAlias(ctx, action, keyID, alias, replaceable)
}

// MoveAlias gives alias, which the key from holds, to the key to, and a
// new placeholder alias to from, authorising action on both keys, in one
// store transaction: no crash, and no request on this or another node,
// can find the alias free between the two changes or take it. The key to
// must hold a placeholder alias (ErrKeyHasAlias otherwise); from == to
// changes nothing. Errors: ErrInvalidKeyID, ErrInvalidAlias,
// ErrUnauthorized, ErrKeyNotFound (either key, or from no longer holds
// the alias), ErrKeyStateNotSupported (either key PendingDelete),
// ErrKeyHasAlias, ErrAliasExists (the alias is being created), ErrInternal.
func (s *Service) MoveAlias(ctx context.Context, action, from, to, alias string) error {
	if err := validateAlias(alias); err != nil {
		return err
	}
	for _, id := range []string{from, to} {
		if _, ok := parseKeyID(id); !ok {
			return ErrInvalidKeyID
		}
		if err := authorize(ctx, action, id); err != nil {
			return err
		}
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	fresh, unlock, err := s.lockFreshAll(ctx, []string{from, to})
	if err != nil {
		return err
	}
	defer unlock()
	kf, kt := fresh[from], fresh[to]
	rf, rt := kf.rec, kt.rec
	for _, c := range []struct {
		k *keyEntry
		r *store.Key
	}{{kf, &rf}, {kt, &rt}} {
		if err := notPendingDelete(c.k, c.r); err != nil {
			return err
		}
	}
	if rf.Alias != alias {
		return fmt.Errorf("%w: the alias %q is no longer the key %s's", ErrKeyNotFound, alias, from)
	}
	if from == to {
		return nil
	}
	if !IsPlaceholderAlias(rt.Alias) {
		return fmt.Errorf("%w: %q", ErrKeyHasAlias, rt.Alias)
	}
	s.mu.RLock()
	_, creating := s.reserved[alias]
	s.mu.RUnlock()
	if creating {
		return fmt.Errorf("%w: %q", ErrAliasExists, alias)
	}
	rf.Alias, rt.Alias = NewPlaceholderAlias(), alias
	// from gives the alias up before to takes it, in the same transaction.
	_, err = s.applyAllLocked(ctx, action, []*keyEntry{kf, kt}, []store.Key{rf, rt})
	return err
}

// ListAliases is ListKeys authorised as kms:ListAliases: the keys, with
// their aliases, in the order and pages ListKeys gives them.
func (s *Service) ListAliases(ctx context.Context, in ListKeysInput) (ListKeysResult, error) {
	if err := authorize(ctx, "kms:ListAliases", "*"); err != nil {
		return ListKeysResult{}, err
	}
	return s.list(in), nil
}

// GenerateDataKeyWithoutPlaintext is GenerateDataKey authorised as
// kms:GenerateDataKeyWithoutPlaintext; the result's Plaintext is nil (the
// data key is wiped before it returns).
func (s *Service) GenerateDataKeyWithoutPlaintext(ctx context.Context, in GenerateDataKeyInput) (GenerateDataKeyResult, error) {
	res, err := s.generateDataKey(ctx, "kms:GenerateDataKeyWithoutPlaintext", in)
	clear(res.Plaintext)
	res.Plaintext = nil
	return res, err
}

// DisableAndScheduleKeyDeletion schedules the deletion of a key as AWS KMS
// does, Enabled or Disabled: an Enabled key is disabled in the same change,
// which then needs kms:DisableKey as well as kms:ScheduleKeyDeletion (so no
// policy allows more through the AWS API than through the Tencent ones,
// where disabling comes first). Errors are ScheduleKeyDeletion's; an
// Archived key still gives ErrKeyShouldBeDisabled.
func (s *Service) DisableAndScheduleKeyDeletion(ctx context.Context, keyID string, pendingWindowInDays int) (KeyMetadata, error) {
	if pendingWindowInDays < MinPendingWindowDays || pendingWindowInDays > MaxPendingWindowDays {
		return KeyMetadata{}, fmt.Errorf("%w: %d", ErrInvalidPendingWindow, pendingWindowInDays)
	}
	schedule := scheduleDeletion(pendingWindowInDays)
	return s.change(ctx, "kms:ScheduleKeyDeletion", keyID, func(k *keyEntry, r *store.Key, now time.Time) error {
		if r.State == StateEnabled {
			if err := authorize(ctx, "kms:DisableKey", keyID); err != nil {
				return err
			}
			r.State = StateDisabled
		}
		return schedule(k, r, now)
	})
}
