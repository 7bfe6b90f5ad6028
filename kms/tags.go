package kms

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"hsmkms/store"
)

// Resource tags.
//
// A key carries up to MaxTagsPerKey tags (key/value pairs), as Tencent
// Cloud's tag service attaches them to a KMS key. They are part of the
// key's authenticated metadata: the key row's MAC covers them (keyMsg), so
// a tag added, changed or removed in the database outside kmsd makes the
// key fail its integrity check like any other field. Tags decide nothing
// in kmsd (no policy condition reads them); they label keys for tools
// (Terraform, tccli tag, the AWS front door) and filter listings.
//
// Policy actions live in the namespace "tag:" and are checked against the
// key id, like kms: actions that address a key:
//
//	tag:TagResources                       TagKey, CreateKey with tags
//	tag:UnTagResources                     UntagKey
//	tag:ModifyResourceTags                 ModifyKeyTags
//	tag:DescribeResourceTagsByResourceIds  KeyTags
//	tag:GetResources                       TaggedKeys (keys not allowed are left out)
//
// "tag:*", "tag:<prefix>*" and "*" match them, and so does "kms:*": full
// access to keys includes labelling them (no other kms: pattern does).

// Tag limits, as Tencent Cloud documents them for resource tags.
const (
	MaxTagsPerKey    = 50
	MaxTagKeyChars   = 127 // characters (runes), at least 1
	MaxTagValueChars = 255 // characters (runes), may be empty
	// MaxTagsPerCall caps the tags of one TagKey, UntagKey or
	// ModifyKeyTags call (each list), as the tag service does.
	MaxTagsPerCall = 10
)

// reservedTagPrefixes are the tag key prefixes Tencent Cloud reserves for
// system tags (compared case-insensitively).
var reservedTagPrefixes = []string{"qcloud", "tencent", "project"}

// Tag policy actions (see the package comment above).
const (
	ActTagResources       = "tag:TagResources"
	ActUnTagResources     = "tag:UnTagResources"
	ActModifyResourceTags = "tag:ModifyResourceTags"
	ActDescribeTags       = "tag:DescribeResourceTagsByResourceIds"
	ActGetResources       = "tag:GetResources"
)

const tagNS = "tag:"

var tagActions = []string{ActDescribeTags, ActGetResources, ActModifyResourceTags, ActTagResources, ActUnTagResources}

// TagActions returns every tag action, "tag:<Action>"; each is checked
// against a key id.
func TagActions() []string { return append([]string(nil), tagActions...) }

// Tag is one resource tag of a key.
type Tag struct {
	Key   string
	Value string
}

// TagFilter selects keys by tag: a key matches when it has the tag Key
// and, if Values is not empty, its value is one of Values.
type TagFilter struct {
	Key    string
	Values []string
}

// ErrInvalidTag means a tag key or value breaks the limits, or a tag key
// appears twice in one request; ErrTagLimit means a key would carry more
// than MaxTagsPerKey tags, or a call names more than MaxTagsPerCall. Both
// are returned as a *TagError that names the Tencent error code.
var (
	ErrInvalidTag = errors.New("kms: invalid tag")
	ErrTagLimit   = errors.New("kms: tag limit exceeded")
)

// TagError is a refused tag, with the error code Tencent's tag service
// gives for it (e.g. "InvalidParameterValue.TagKeyCharacterIllegal"). It
// wraps ErrInvalidTag or ErrTagLimit.
type TagError struct {
	Code string
	Msg  string
	err  error
}

func (e *TagError) Error() string { return "kms: " + e.Msg }
func (e *TagError) Unwrap() error { return e.err }

func tagErr(sentinel error, code, format string, args ...any) error {
	return &TagError{Code: code, Msg: fmt.Sprintf(format, args...), err: sentinel}
}

// tagCharOK reports whether r may appear in a tag key or value: a letter
// or a digit (any script), a space, or one of + - = . _ : / @.
func tagCharOK(r rune) bool {
	return unicode.IsLetter(r) || unicode.IsDigit(r) || r == ' ' || strings.ContainsRune("+-=._:/@", r)
}

// ValidateTagKey checks a tag key against Tencent's limits; errors are
// *TagError.
func ValidateTagKey(k string) error {
	switch n := utf8.RuneCountInString(k); {
	case k == "":
		return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyEmpty", "a tag key is empty")
	case !utf8.ValidString(k):
		return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyCharacterIllegal", "a tag key is not valid UTF-8")
	case n > MaxTagKeyChars:
		return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyLengthExceeded", "a tag key is longer than %d characters", MaxTagKeyChars)
	}
	for _, r := range k {
		if !tagCharOK(r) {
			return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyCharacterIllegal",
				"tag key %q: only letters, digits, spaces and + - = . _ : / @ are allowed", k)
		}
	}
	for _, p := range reservedTagPrefixes {
		if len(k) >= len(p) && strings.EqualFold(k[:len(p)], p) {
			return tagErr(ErrInvalidTag, "InvalidParameterValue.ReservedTagKey", "tag key %q: the prefixes qcloud, tencent and project are reserved", k)
		}
	}
	return nil
}

// ValidateTagValue checks a tag value against Tencent's limits; errors
// are *TagError.
func ValidateTagValue(v string) error {
	if !utf8.ValidString(v) {
		return tagErr(ErrInvalidTag, "InvalidParameterValue.TagValueCharacterIllegal", "a tag value is not valid UTF-8")
	}
	if utf8.RuneCountInString(v) > MaxTagValueChars {
		return tagErr(ErrInvalidTag, "InvalidParameterValue.TagValueLengthExceeded", "a tag value is longer than %d characters", MaxTagValueChars)
	}
	for _, r := range v {
		if !tagCharOK(r) {
			return tagErr(ErrInvalidTag, "InvalidParameterValue.TagValueCharacterIllegal",
				"tag value %q: only letters, digits, spaces and + - = . _ : / @ are allowed", v)
		}
	}
	return nil
}

// validateTagSet checks the tags of one request: each valid, keys distinct,
// at most limit of them.
func validateTagSet(tags []Tag, limit int) error {
	if len(tags) > limit {
		return tagErr(ErrTagLimit, "LimitExceeded.TagNumPerResource", "at most %d tags are allowed", limit)
	}
	seen := make(map[string]bool, len(tags))
	for _, t := range tags {
		if err := ValidateTagKey(t.Key); err != nil {
			return err
		}
		if err := ValidateTagValue(t.Value); err != nil {
			return err
		}
		if seen[t.Key] {
			return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyDuplicate", "the tag key %q appears twice", t.Key)
		}
		seen[t.Key] = true
	}
	return nil
}

// applyTags returns old with the tags in set added or changed and the keys
// in remove removed, sorted by key, as a new slice (old is shared by cache
// entries and never modified). It refuses a result above MaxTagsPerKey.
func applyTags(old []store.Tag, set []Tag, remove []string) ([]store.Tag, error) {
	m := make(map[string]string, len(old)+len(set))
	for _, t := range old {
		m[t.Key] = t.Value
	}
	for _, k := range remove {
		delete(m, k)
	}
	for _, t := range set {
		m[t.Key] = t.Value
	}
	if len(m) > MaxTagsPerKey {
		return nil, tagErr(ErrTagLimit, "LimitExceeded.TagNumPerResource", "a key carries at most %d tags", MaxTagsPerKey)
	}
	out := make([]store.Tag, 0, len(m))
	for k, v := range m {
		out = append(out, store.Tag{Key: k, Value: v})
	}
	slices.SortFunc(out, func(a, b store.Tag) int { return strings.Compare(a.Key, b.Key) })
	return out, nil
}

func sameTags(a, b []store.Tag) bool {
	return slices.Equal(a, b)
}

func toTags(in []store.Tag) []Tag {
	if len(in) == 0 {
		return nil
	}
	out := make([]Tag, len(in))
	for i, t := range in {
		out[i] = Tag{Key: t.Key, Value: t.Value}
	}
	return out
}

// matchTags reports whether tags satisfy every filter.
func matchTags(tags []store.Tag, filters []TagFilter) bool {
	for _, f := range filters {
		i := slices.IndexFunc(tags, func(t store.Tag) bool { return t.Key == f.Key })
		if i < 0 || len(f.Values) > 0 && !slices.Contains(f.Values, tags[i].Value) {
			return false
		}
	}
	return true
}

// TagKey adds tags to a key, or changes the value of tags it has
// (TagResources). Authorised as tag:TagResources on the key. Errors:
// ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound (also for a Deleted
// key), *TagError (ErrInvalidTag, ErrTagLimit: at most MaxTagsPerCall tags
// per call, MaxTagsPerKey per key), ErrKeyDisabled (a key failing its
// integrity check), ErrInternal. Safe for concurrent use.
func (s *Service) TagKey(ctx context.Context, keyID string, tags []Tag) error {
	return s.ModifyTags(ctx, ActTagResources, keyID, tags, nil)
}

// UntagKey removes the tags with the given keys from a key; keys it does
// not carry are ignored (UnTagResources). Authorised as
// tag:UnTagResources. Errors as TagKey.
func (s *Service) UntagKey(ctx context.Context, keyID string, tagKeys []string) error {
	return s.ModifyTags(ctx, ActUnTagResources, keyID, nil, tagKeys)
}

// ModifyTags removes the tags named by remove and sets those of set, in
// one change, authorised as action (one of TagActions that changes tags:
// ActTagResources, ActUnTagResources or ActModifyResourceTags). set and
// remove may not name the same tag key (ModifyResourceTags' rule); each
// holds at most MaxTagsPerCall entries. Errors as TagKey. Other front doors
// (e.g. an AWS-compatible TagResource) call TagKey/UntagKey or this with
// the tag action that fits.
func (s *Service) ModifyTags(ctx context.Context, action, keyID string, set []Tag, remove []string) error {
	switch action {
	case ActTagResources, ActUnTagResources, ActModifyResourceTags:
	default:
		return fmt.Errorf("%w: %s does not change tags", ErrUnauthorized, action)
	}
	if err := validateTagSet(set, MaxTagsPerCall); err != nil {
		return err
	}
	if len(remove) > MaxTagsPerCall {
		return tagErr(ErrTagLimit, "LimitExceeded.TagNumPerResource", "at most %d tag keys may be removed at once", MaxTagsPerCall)
	}
	for _, k := range remove {
		if k == "" {
			return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyEmpty", "a tag key is empty")
		}
		if slices.ContainsFunc(set, func(t Tag) bool { return t.Key == k }) {
			return tagErr(ErrInvalidTag, "InvalidParameterValue.TagKeyDuplicate", "the tag key %q is both set and removed", k)
		}
	}
	_, err := s.change(ctx, action, keyID, func(k *keyEntry, r *store.Key, _ time.Time) error {
		tags, err := applyTags(k.rec.Tags, set, remove)
		if err != nil {
			return err
		}
		r.Tags = tags
		return nil
	})
	return err
}

// KeyTags returns the tags of a key, sorted by key (nil if it has none).
// Authorised as tag:DescribeResourceTagsByResourceIds. Errors:
// ErrInvalidKeyID, ErrUnauthorized, ErrKeyNotFound (also for a Deleted
// key), ErrKeyDisabled for a key failing its integrity check (its stored
// tags are not to be believed). Served from the cache. Safe for
// concurrent use.
func (s *Service) KeyTags(ctx context.Context, keyID string) ([]Tag, error) {
	id, ok := parseKeyID(keyID)
	if !ok {
		return nil, ErrInvalidKeyID
	}
	if err := authorize(ctx, ActDescribeTags, keyID); err != nil {
		return nil, err
	}
	k, err := s.lookupCtx(ctx, id)
	if err != nil {
		return nil, err
	}
	if k == nil || k.meta.KeyState == StateDeleted {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, keyID)
	}
	if err := checkUsable(k); err != nil {
		return nil, err
	}
	return toTags(k.rec.Tags), nil
}

// TaggedKey is a key and its tags, as TaggedKeys lists them.
type TaggedKey struct {
	KeyID string
	Tags  []Tag // sorted by key, never empty
}

// TaggedKeys returns the keys (not Deleted) that carry at least one tag
// and match every filter, oldest first (ties by id), leaving out those the
// caller may not tag:GetResources and those failing their integrity check. It never fails for want of rights: a
// caller allowed nothing gets an empty list. Served from the cache. Safe
// for concurrent use.
func (s *Service) TaggedKeys(ctx context.Context, filters []TagFilter) []TaggedKey {
	all := s.list(ListKeysInput{TagFilters: filters})
	out := []TaggedKey{}
	for _, m := range all.Keys {
		if authorize(ctx, ActGetResources, m.KeyID) != nil {
			continue
		}
		id, _ := parseKeyID(m.KeyID)
		if k := s.lookup(id); k != nil && k.suspect == nil && len(k.rec.Tags) > 0 {
			out = append(out, TaggedKey{KeyID: m.KeyID, Tags: toTags(k.rec.Tags)})
		}
	}
	return out
}
