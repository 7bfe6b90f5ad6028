package kms

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"hsmkms/store"
)

func TestTagLimits(t *testing.T) {
	for _, tt := range []struct {
		key, value, code string
	}{
		{"team", "pay", ""},
		{"部门", "电商 A+B=c/d@e:f_g.h-i", ""},
		{strings.Repeat("k", 127), strings.Repeat("v", 255), ""},
		{strings.Repeat("键", 127), strings.Repeat("值", 255), ""}, // characters, not bytes
		{"", "v", "InvalidParameterValue.TagKeyEmpty"},
		{strings.Repeat("k", 128), "v", "InvalidParameterValue.TagKeyLengthExceeded"},
		{"k", strings.Repeat("v", 256), "InvalidParameterValue.TagValueLengthExceeded"},
		{"a<b", "v", "InvalidParameterValue.TagKeyCharacterIllegal"},
		{"a\x00b", "v", "InvalidParameterValue.TagKeyCharacterIllegal"},
		{"k", "a;b", "InvalidParameterValue.TagValueCharacterIllegal"},
		{"k", "\xff", "InvalidParameterValue.TagValueCharacterIllegal"},
		{"QCloud:x", "v", "InvalidParameterValue.ReservedTagKey"},
		{"tencent", "v", "InvalidParameterValue.ReservedTagKey"},
		{"project-a", "v", "InvalidParameterValue.ReservedTagKey"},
		{"my-project", "v", ""},
	} {
		err := validateTagSet([]Tag{{Key: tt.key, Value: tt.value}}, MaxTagsPerKey)
		var te *TagError
		switch {
		case tt.code == "" && err != nil:
			t.Errorf("%q=%q: %v", tt.key, tt.value, err)
		case tt.code != "" && (!errors.As(err, &te) || te.Code != tt.code || !errors.Is(err, ErrInvalidTag)):
			t.Errorf("%q=%q: %v, want %s", tt.key, tt.value, err, tt.code)
		}
	}
	if err := validateTagSet([]Tag{{Key: "a"}, {Key: "a", Value: "2"}}, MaxTagsPerKey); err == nil {
		t.Error("duplicate tag keys accepted")
	}
}

func tagMap(tags []Tag) map[string]string {
	m := map[string]string{}
	for _, t := range tags {
		m[t.Key] = t.Value
	}
	return m
}

func TestTagKeyUntagKey(t *testing.T) {
	e := newEnv(t, Config{})
	md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "tagged", Tags: []Tag{{Key: "team", Value: "pay"}, {Key: "env", Value: "prod"}}})
	if err != nil {
		t.Fatal(err)
	}
	id := md.KeyID
	other := e.create(t, "other")
	got, err := e.svc.KeyTags(adminCtx, id)
	if err != nil || !slices.Equal(got, []Tag{{Key: "env", Value: "prod"}, {Key: "team", Value: "pay"}}) {
		t.Fatalf("KeyTags %v %v, want sorted", got, err)
	}
	if err := e.svc.TagKey(adminCtx, id, []Tag{{Key: "team", Value: "ops"}, {Key: "owner", Value: "li"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.svc.UntagKey(adminCtx, id, []string{"env", "absent"}); err != nil {
		t.Fatal(err)
	}
	got, _ = e.svc.KeyTags(adminCtx, id)
	if m := tagMap(got); len(m) != 2 || m["team"] != "ops" || m["owner"] != "li" {
		t.Fatalf("after tag and untag: %v", got)
	}
	var te *TagError
	if err := e.svc.ModifyTags(adminCtx, ActModifyResourceTags, id, []Tag{{Key: "a", Value: "1"}}, []string{"a"}); !errors.As(err, &te) || te.Code != "InvalidParameterValue.TagKeyDuplicate" {
		t.Fatalf("set and remove one key: %v", err)
	}
	if err := e.svc.ModifyTags(adminCtx, "kms:Encrypt", id, []Tag{{Key: "a", Value: "1"}}, nil); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("ModifyTags as kms:Encrypt: %v", err)
	}
	eleven := make([]Tag, 11)
	for i := range eleven {
		eleven[i] = Tag{Key: "k" + strings.Repeat("x", i)}
	}
	if err := e.svc.TagKey(adminCtx, id, eleven); !errors.Is(err, ErrTagLimit) {
		t.Fatalf("11 tags in one call: %v", err)
	}
	// 50 per key, across calls.
	for i := range 5 {
		batch := make([]Tag, 10)
		for j := range batch {
			batch[j] = Tag{Key: "b" + strings.Repeat("x", i*10+j)}
		}
		err := e.svc.TagKey(adminCtx, id, batch)
		if i < 4 && err != nil || i == 4 && !errors.Is(err, ErrTagLimit) {
			t.Fatalf("batch %d (2 tags before): %v", i, err)
		}
	}
	got, _ = e.svc.KeyTags(adminCtx, id)
	if len(got) != 42 {
		t.Fatalf("%d tags, want 42 (the refused batch changed nothing)", len(got))
	}
	// Tag filters.
	if err := e.svc.TagKey(adminCtx, other.KeyID, []Tag{{Key: "team", Value: "pay"}}); err != nil {
		t.Fatal(err)
	}
	list := func(f ...TagFilter) []string {
		res, err := e.svc.ListKeyDetail(adminCtx, ListKeysInput{TagFilters: f})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, k := range res.Keys {
			ids = append(ids, k.KeyID)
		}
		slices.Sort(ids)
		return ids
	}
	both := []string{id, other.KeyID}
	slices.Sort(both)
	if got := list(TagFilter{Key: "team"}); !slices.Equal(got, both) {
		t.Fatalf("team: %v", got)
	}
	if got := list(TagFilter{Key: "team", Values: []string{"ops", "x"}}); !slices.Equal(got, []string{id}) {
		t.Fatalf("team in (ops, x): %v", got)
	}
	if got := list(TagFilter{Key: "team"}, TagFilter{Key: "owner", Values: []string{"li"}}); !slices.Equal(got, []string{id}) {
		t.Fatalf("team and owner=li: %v", got)
	}
	// TaggedKeys leaves out keys the caller may not tag:GetResources.
	one := WithPrincipal(context.Background(), &Principal{SecretID: "AKIDone", Policy: mustPolicy(t, pol(`{"effect":"allow","action":"tag:GetResources","resource":"`+other.KeyID+`"}`))})
	if tk := e.svc.TaggedKeys(one, nil); len(tk) != 1 || tk[0].KeyID != other.KeyID {
		t.Fatalf("TaggedKeys for one key's reader: %+v", tk)
	}
	if _, err := e.svc.KeyTags(one, other.KeyID); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("KeyTags without tag:DescribeResourceTagsByResourceIds: %v", err)
	}
	// CreateKey with tags needs tag:TagResources too.
	creator := WithPrincipal(context.Background(), &Principal{SecretID: "AKIDc", Policy: mustPolicy(t, pol(`{"effect":"allow","action":"kms:CreateKey","resource":"*"}`))})
	if _, err := e.svc.CreateKey(creator, CreateKeyInput{Alias: "c1", Tags: []Tag{{Key: "a"}}}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("CreateKey with Tags without tag:TagResources: %v", err)
	}
	if _, err := e.svc.CreateKey(creator, CreateKeyInput{Alias: "c2"}); err != nil {
		t.Fatalf("CreateKey without Tags: %v", err)
	}
	// Tags survive a restart (the store keeps them with the row).
	e.restart(t)
	got, _ = e.svc.KeyTags(adminCtx, other.KeyID)
	if !slices.Equal(got, []Tag{{Key: "team", Value: "pay"}}) {
		t.Fatalf("after restart: %v", got)
	}
}

func TestTamperedTagsAreNotObeyed(t *testing.T) {
	e, hooked := integrityEnv(t, nil)
	for _, c := range []struct {
		name   string
		change func(k *store.Key)
	}{
		{"value changed", func(k *store.Key) { k.Tags = []store.Tag{{Key: "team", Value: "eve"}} }},
		{"tag removed", func(k *store.Key) { k.Tags = nil }},
		{"tag added", func(k *store.Key) { k.Tags = append(slices.Clone(k.Tags), store.Tag{Key: "zz", Value: "eve"}) }},
		{"key renamed", func(k *store.Key) { k.Tags = []store.Tag{{Key: "tean", Value: "pay"}} }},
	} {
		t.Run(c.name, func(t *testing.T) {
			md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: strings.ReplaceAll(c.name, " ", "-"), Tags: []Tag{{Key: "team", Value: "pay"}}})
			if err != nil {
				t.Fatal(err)
			}
			before := cloneKey(e.st.keys[md.KeyID])
			e.st.rawKey(md.KeyID, c.change)
			e.restart(t)
			if _, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: md.KeyID, Plaintext: []byte("x")}); !errors.Is(err, ErrKeyDisabled) {
				t.Fatalf("Encrypt: %v", err)
			}
			wantFailure(t, e, hooked(), KindKey, md.KeyID)
			if _, err := e.svc.KeyTags(adminCtx, md.KeyID); !errors.Is(err, ErrKeyDisabled) {
				t.Fatalf("KeyTags of a tampered key: %v", err)
			}
			if err := e.svc.TagKey(adminCtx, md.KeyID, []Tag{{Key: "team", Value: "pay"}}); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("TagKey of a tampered key: %v, want ErrIntegrity", err)
			}
			res, _ := e.svc.ListKeyDetail(adminCtx, ListKeysInput{TagFilters: []TagFilter{{Key: "team"}}})
			for _, k := range res.Keys {
				if k.KeyID == md.KeyID {
					t.Fatal("a tampered key matched a tag filter")
				}
			}
			e.st.rawKey(md.KeyID, func(r *store.Key) { *r = cloneKey(before) })
			if err := e.svc.ResealKey(adminCtx, md.KeyID); err != nil {
				t.Fatal(err)
			}
			if got, err := e.svc.KeyTags(adminCtx, md.KeyID); err != nil || !slices.Equal(got, []Tag{{Key: "team", Value: "pay"}}) {
				t.Fatalf("after reseal: %v %v", got, err)
			}
		})
	}
}

// A key without tags has the MAC message of the release before tags, so
// rows sealed then verify unchanged; any tag changes it.
func TestKeyMACWithoutTagsUnchanged(t *testing.T) {
	r := store.Key{ID: "k", Alias: "a", Description: "d", Usage: "ENCRYPT_DECRYPT", State: StateEnabled, Origin: OriginTencentKMS,
		Versions: []store.Version{{Number: 1}}, Gen: 3}
	legacy := newMACMsg(KindKey).str(r.ID).str(r.Alias).str(r.Description).str(r.Usage).str(r.State).str(r.Origin).
		time(r.CreatedAt).time(r.DeletionDate).flag(r.RotationEnabled).u64(uint64(r.RotateDays)).time(r.LastRotatedAt).
		u64(1).u64(1).u64(r.Gen).b
	if string(keyMsg(r)) != string(legacy) {
		t.Fatal("the MAC message of a key without tags changed")
	}
	seen := map[string]bool{string(legacy): true}
	for _, tags := range [][]store.Tag{
		{{Key: "a", Value: ""}}, {{Key: "a", Value: "b"}}, {{Key: "ab", Value: ""}},
		{{Key: "a", Value: "b"}, {Key: "c", Value: ""}}, {{Key: "a", Value: ""}, {Key: "bc", Value: ""}},
	} {
		r.Tags = tags
		m := string(keyMsg(r))
		if seen[m] {
			t.Fatalf("tags %v encode like another set", tags)
		}
		seen[m] = true
	}
}

func TestTagPolicy(t *testing.T) {
	for _, tt := range []struct {
		action string
		ok     bool
	}{
		{"tag:TagResources", true}, {"tag:*", true}, {"tag:Describe*", true}, {"TAG:untagresources", true},
		{"tag:AddProject", false}, {"tag:Nope*", false}, {"tags:TagResources", false},
		{"kms:TagResources", false}, {"kms:Tag*", false}, // tag actions are not kms: names
	} {
		if err := validateAction(tt.action); (err == nil) != tt.ok {
			t.Errorf("validateAction(%q) = %v", tt.action, err)
		}
	}
	const key = "00000000-0000-4000-8000-000000000001"
	for _, tt := range []struct {
		pattern string
		want    bool
	}{
		{"kms:*", true}, {"tag:*", true}, {"*", true}, {"tag:Tag*", true},
		{"kms-admin:*", false}, {"kms:Describe*", false}, {"tag:UnTag*", false},
	} {
		p := mustPolicy(t, pol(`{"effect":"allow","action":"`+tt.pattern+`","resource":"*"}`))
		if got := p.Allows(ActTagResources, key); got != tt.want {
			t.Errorf("%s allows tag:TagResources: %v, want %v", tt.pattern, got, tt.want)
		}
	}
	// Containment: a caller cannot grant tag rights it lacks.
	caller := mustPolicy(t, pol(`{"effect":"allow","action":["kms:Encrypt","kms-admin:*"],"resource":"*"}`))
	grant := mustPolicy(t, pol(`{"effect":"allow","action":"tag:TagResources","resource":"*"}`))
	if a, _, ok, err := covers(caller, grant); err != nil || ok || a != ActTagResources {
		t.Fatalf("covers: %s %v %v", a, ok, err)
	}
	if _, _, ok, _ := covers(AdminPolicy(), grant); !ok {
		t.Fatal("the administrator cannot grant tag:TagResources")
	}
	// A statement of tag actions only on a key is valid.
	if _, err := ParsePolicy(pol(`{"effect":"allow","action":"tag:*","resource":"` + key + `"}`)); err != nil {
		t.Fatal(err)
	}
}
