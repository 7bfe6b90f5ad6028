package store_test

import (
	"errors"
	"reflect"
	"testing"

	"hsmkms/kms"
	"hsmkms/store"
)

func TestSQLiteTags(t *testing.T) {
	t.Parallel()
	testTags(t, sqliteHarness)
}

func TestPostgresTags(t *testing.T) {
	t.Parallel()
	testTags(t, postgresHarness)
}

// testTags: a key's tags are written by CreateKey and UpdateKey with the
// key row, in one transaction, and read back sorted (bytewise) by GetKey
// and ListKeys, across reopenings.
func testTags(t *testing.T, h storeHarness) {
	open := h.NewStorage(t)
	s := open(t)
	ctx := t.Context()

	k := newKey(1, "tagged", 1)
	k.Tags = []store.Tag{{Key: "team", Value: "pay"}, {Key: "Zone", Value: ""}, {Key: "部门", Value: "电商"}, {Key: "env", Value: "prod"}}
	mustCreate(t, s, k)
	plain := newKey(2, "plain", 1)
	mustCreate(t, s, plain)
	sorted := []store.Tag{{Key: "Zone", Value: ""}, {Key: "env", Value: "prod"}, {Key: "team", Value: "pay"}, {Key: "部门", Value: "电商"}}
	tagsOf := func(s kms.Store, id string) []store.Tag {
		t.Helper()
		got, err := s.GetKey(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		all, err := s.ListKeys(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range all {
			if l.ID == id && !reflect.DeepEqual(l.Tags, got.Tags) {
				t.Fatalf("ListKeys tags %v, GetKey %v", l.Tags, got.Tags)
			}
		}
		return got.Tags
	}
	if got := tagsOf(s, k.ID); !reflect.DeepEqual(got, sorted) {
		t.Fatalf("tags %v, want %v", got, sorted)
	}
	if got := tagsOf(s, plain.ID); got != nil {
		t.Fatalf("untagged key: %v", got)
	}

	// UpdateKey replaces them with the row.
	u := k
	u.Gen, u.MAC = 2, []byte("mac-2")
	u.Tags = []store.Tag{{Key: "env", Value: "staging"}, {Key: "owner", Value: "zhang"}}
	if err := s.UpdateKey(ctx, u); err != nil {
		t.Fatal(err)
	}
	if got := tagsOf(s, k.ID); !reflect.DeepEqual(got, u.Tags) {
		t.Fatalf("after update: %v", got)
	}
	// A stale update changes neither the row nor its tags.
	stale := u
	stale.Tags = []store.Tag{{Key: "x", Value: "y"}}
	if err := s.UpdateKey(ctx, stale); !errors.Is(err, store.ErrStale) {
		t.Fatalf("stale update: %v", err)
	}
	// Duplicate or empty tag keys are refused and change nothing.
	for _, bad := range [][]store.Tag{{{Key: "a"}, {Key: "a", Value: "2"}}, {{Key: ""}}} {
		b := u
		b.Gen, b.Tags = 3, bad
		if err := s.UpdateKey(ctx, b); err == nil {
			t.Fatalf("UpdateKey with tags %v succeeded", bad)
		}
		c := newKey(3, "bad", 1)
		c.Tags = bad
		if err := s.CreateKey(ctx, c); err == nil {
			t.Fatalf("CreateKey with tags %v succeeded", bad)
		}
		if _, err := s.GetKey(ctx, c.ID); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a refused CreateKey left the key: %v", err)
		}
	}
	if got := tagsOf(s, k.ID); !reflect.DeepEqual(got, u.Tags) {
		t.Fatalf("after refused updates: %v", got)
	}
	// Removing every tag.
	u.Gen, u.Tags = 4, nil
	if err := s.UpdateKey(ctx, u); err != nil {
		t.Fatal(err)
	}
	if got := tagsOf(s, k.ID); got != nil {
		t.Fatalf("after removing all: %v", got)
	}
	u.Gen, u.Tags = 5, []store.Tag{{Key: "kept", Value: "1"}}
	if err := s.UpdateKey(ctx, u); err != nil {
		t.Fatal(err)
	}
	// Reopened storage.
	if c, ok := s.(interface{ Close() error }); ok {
		_ = c.Close()
	}
	s2 := open(t)
	if got := tagsOf(s2, k.ID); !reflect.DeepEqual(got, u.Tags) {
		t.Fatalf("after reopening: %v", got)
	}
}
