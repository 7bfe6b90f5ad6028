package kms_test

// Key lifecycle, rotation, scheduled deletion, data keys and usage limits,
// over the real SQLite store and a real SoftHSM2 token.

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"hsmkms/kms"
	"hsmkms/store"
)

// testClock is an injectable clock that tests move by hand.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func newTestClock() *testClock {
	return &testClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

const day = 24 * time.Hour

// toState brings an Enabled key to state through the public API.
func (r *rig) toState(keyID, state string) {
	r.t.Helper()
	ctx := adminCtx()
	var err error
	switch state {
	case kms.StateEnabled:
	case kms.StateDisabled:
		err = r.svc.DisableKey(ctx, keyID)
	case kms.StatePendingDelete:
		if err = r.svc.DisableKey(ctx, keyID); err == nil {
			_, err = r.svc.ScheduleKeyDeletion(ctx, keyID, 7)
		}
	case kms.StateArchived:
		err = r.svc.ArchiveKey(ctx, keyID)
	default:
		r.t.Fatalf("toState %s", state)
	}
	if err != nil {
		r.t.Fatalf("to %s: %v", state, err)
	}
}

// TestStateMachine runs every action in every state: each gives the
// documented result or error, and a refused action changes nothing (the
// metadata, the store record and the token are as before).
func TestStateMachine(t *testing.T) {
	clock := newTestClock()
	r := newRig(t, kms.Config{Clock: clock.Now})
	ctx := adminCtx()
	type result struct {
		err   error  // nil: success
		state string // the state after a success ("" = unchanged)
	}
	ok := func(state string) result { return result{state: state} }
	fail := func(err error) result { return result{err: err} }
	var (
		en, dis, pd, ar = kms.StateEnabled, kms.StateDisabled, kms.StatePendingDelete, kms.StateArchived
		notSupp         = fail(kms.ErrKeyStateNotSupported)
	)
	blobs := map[string]string{} // per key: a blob made while Enabled
	actions := []struct {
		name string
		do   func(keyID string) error
		want map[string]result
	}{
		{"Encrypt", func(id string) error {
			_, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: id, Plaintext: []byte("x")})
			return err
		}, map[string]result{en: ok(""), dis: fail(kms.ErrKeyDisabled), pd: notSupp, ar: fail(kms.ErrKeyArchived)}},
		{"GenerateDataKey", func(id string) error {
			_, err := r.svc.GenerateDataKey(ctx, kms.GenerateDataKeyInput{KeyID: id, KeySpec: "AES_256"})
			return err
		}, map[string]result{en: ok(""), dis: fail(kms.ErrKeyDisabled), pd: notSupp, ar: fail(kms.ErrKeyArchived)}},
		{"ReEncryptTo", func(id string) error {
			_, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blobs["source"], DestinationKeyID: id})
			return err
		}, map[string]result{en: ok(""), dis: fail(kms.ErrKeyDisabled), pd: notSupp, ar: fail(kms.ErrKeyArchived)}},
		{"Decrypt", func(id string) error {
			_, err := r.svc.Decrypt(ctx, kms.DecryptInput{CiphertextBlob: blobs[id]})
			return err
		}, map[string]result{en: ok(""), dis: fail(kms.ErrKeyDisabled), pd: notSupp, ar: ok("")}},
		{"ReEncryptFrom", func(id string) error {
			_, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blobs[id], DestinationKeyID: blobs["sourceID"]})
			return err
		}, map[string]result{en: ok(""), dis: fail(kms.ErrKeyDisabled), pd: notSupp, ar: ok("")}},
		{"EnableKey", func(id string) error { return r.svc.EnableKey(ctx, id) },
			map[string]result{en: ok(en), dis: ok(en), pd: notSupp, ar: notSupp}},
		{"DisableKey", func(id string) error { return r.svc.DisableKey(ctx, id) },
			map[string]result{en: ok(dis), dis: ok(dis), pd: notSupp, ar: notSupp}},
		{"EnableKeys", func(id string) error { return r.svc.EnableKeys(ctx, []string{blobs["sourceID"], id}) },
			map[string]result{en: ok(en), dis: ok(en), pd: notSupp, ar: notSupp}},
		{"DisableKeys", func(id string) error { return r.svc.DisableKeys(ctx, []string{id}) },
			map[string]result{en: ok(dis), dis: ok(dis), pd: notSupp, ar: notSupp}},
		{"ScheduleKeyDeletion", func(id string) error { _, err := r.svc.ScheduleKeyDeletion(ctx, id, 10); return err },
			map[string]result{en: fail(kms.ErrKeyShouldBeDisabled), dis: ok(pd), pd: notSupp, ar: fail(kms.ErrKeyShouldBeDisabled)}},
		{"CancelKeyDeletion", func(id string) error { _, err := r.svc.CancelKeyDeletion(ctx, id); return err },
			map[string]result{en: fail(kms.ErrKeyNotPendingDelete), dis: fail(kms.ErrKeyNotPendingDelete), pd: ok(dis), ar: fail(kms.ErrKeyNotPendingDelete)}},
		{"ArchiveKey", func(id string) error { return r.svc.ArchiveKey(ctx, id) },
			map[string]result{en: ok(ar), dis: notSupp, pd: notSupp, ar: ok(ar)}},
		{"CancelKeyArchive", func(id string) error { return r.svc.CancelKeyArchive(ctx, id) },
			map[string]result{en: notSupp, dis: notSupp, pd: notSupp, ar: ok(en)}},
		{"UpdateAlias", func(id string) error { return r.svc.UpdateAlias(ctx, id, "renamed-"+id[:8]) },
			map[string]result{en: ok(""), dis: ok(""), pd: notSupp, ar: ok("")}},
		{"UpdateKeyDescription", func(id string) error { return r.svc.UpdateKeyDescription(ctx, id, "new description") },
			map[string]result{en: ok(""), dis: ok(""), pd: notSupp, ar: ok("")}},
		{"EnableKeyRotation", func(id string) error { return r.svc.EnableKeyRotation(ctx, id, 30) },
			map[string]result{en: ok(""), dis: ok(""), pd: notSupp, ar: notSupp}},
		{"DisableKeyRotation", func(id string) error { return r.svc.DisableKeyRotation(ctx, id) },
			map[string]result{en: ok(""), dis: ok(""), pd: notSupp, ar: notSupp}},
		{"RotateKey", func(id string) error { _, err := r.svc.RotateKey(ctx, id); return err },
			map[string]result{en: ok(""), dis: fail(kms.ErrKeyDisabled), pd: notSupp, ar: notSupp}},
		{"GetKeyRotationStatus", func(id string) error { _, err := r.svc.GetKeyRotationStatus(ctx, id); return err },
			map[string]result{en: ok(""), dis: ok(""), pd: ok(""), ar: ok("")}},
		{"DescribeKey", func(id string) error { _, err := r.svc.DescribeKey(ctx, id); return err },
			map[string]result{en: ok(""), dis: ok(""), pd: ok(""), ar: ok("")}},
	}

	src := r.create("sm-source")
	blobs["sourceID"] = src.KeyID
	blobs["source"] = r.encrypt(src.KeyID, []byte("source"), "")
	n := 0
	for _, a := range actions {
		for _, state := range []string{en, dis, pd, ar} {
			t.Run(a.name+"/"+state, func(t *testing.T) {
				r.t = t
				n++
				k := r.create(fmt.Sprintf("sm-%d", n))
				blobs[k.KeyID] = r.encrypt(k.KeyID, []byte("payload"), "")
				r.toState(k.KeyID, state)
				before, _ := r.svc.DescribeKey(ctx, k.KeyID)
				rec, _ := r.st.GetKey(ctx, k.KeyID)
				objects := r.tokenCount()

				want := a.want[state]
				err := a.do(k.KeyID)
				after, derr := r.svc.DescribeKey(ctx, k.KeyID)
				if derr != nil {
					t.Fatal(derr)
				}
				if want.err != nil {
					if !errors.Is(err, want.err) {
						t.Fatalf("got %v, want %v", err, want.err)
					}
					rec2, _ := r.st.GetKey(ctx, k.KeyID)
					if !equalMeta(before, after) || !equalRecord(rec, rec2) || r.tokenCount() != objects {
						t.Fatalf("refused action changed something:\n%+v\n%+v", before, after)
					}
					return
				}
				if err != nil {
					t.Fatalf("got %v, want success", err)
				}
				if wantState := cmpState(want.state, state); after.KeyState != wantState {
					t.Fatalf("state %s, want %s", after.KeyState, wantState)
				}
				// The cache and the store agree, and so does a restart's view.
				rec2, _ := r.st.GetKey(ctx, k.KeyID)
				if rec2.State != after.KeyState || rec2.Alias != after.Alias || rec2.Description != after.Description {
					t.Fatalf("store %+v, cache %+v", rec2, after)
				}
			})
		}
	}
	r.t = t
	r.restart()
	list, err := r.svc.ListKeys(ctx, kms.ListKeysInput{})
	if err != nil || list.TotalCount != n+1 {
		t.Fatalf("after restart: %d keys, %v", list.TotalCount, err)
	}
}

func cmpState(want, was string) string {
	if want == "" {
		return was
	}
	return want
}

func equalMeta(a, b kms.KeyMetadata) bool {
	return a.KeyState == b.KeyState && a.Alias == b.Alias && a.Description == b.Description &&
		a.DeletionDate.Equal(b.DeletionDate) && a.CurrentVersion == b.CurrentVersion &&
		a.KeyRotationEnabled == b.KeyRotationEnabled && a.RotateDays == b.RotateDays
}

func equalRecord(a, b store.Key) bool { return fmt.Sprintf("%+v", a) == fmt.Sprintf("%+v", b) }

func (r *rig) tokenCount() int {
	r.t.Helper()
	ids, err := r.h.KeyIDs(adminCtx())
	if err != nil {
		r.t.Fatal(err)
	}
	return len(ids)
}

func TestRotation(t *testing.T) {
	clock := newTestClock()
	r := newRig(t, kms.Config{Clock: clock.Now})
	ctx := adminCtx()
	k := r.create("rot")
	blobs := []string{r.encrypt(k.KeyID, []byte("v1"), `{"a":"1"}`)}
	for want := uint32(2); want <= 3; want++ {
		clock.Advance(time.Hour)
		md, err := r.svc.RotateKey(ctx, k.KeyID)
		if err != nil || md.CurrentVersion != want || !md.LastRotateTime.Equal(clock.Now()) {
			t.Fatalf("RotateKey: %+v %v", md, err)
		}
		res, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: k.KeyID, Plaintext: []byte(fmt.Sprintf("v%d", want)), EncryptionContext: `{"a":"1"}`})
		if err != nil || res.KeyVersion != want {
			t.Fatalf("Encrypt after rotation: %+v %v", res, err)
		}
		blobs = append(blobs, res.CiphertextBlob())
	}
	raw, _ := base64.StdEncoding.DecodeString(blobs[2])
	if v := binary.BigEndian.Uint32(raw[17:21]); v != 3 {
		t.Fatalf("newest blob names version %d", v)
	}
	check := func() {
		t.Helper()
		for i, b := range blobs {
			got, err := r.decrypt(b, `{"a":"1"}`)
			if err != nil || string(got) != fmt.Sprintf("v%d", i+1) {
				t.Fatalf("decrypt v%d: %q %v", i+1, got, err)
			}
		}
	}
	check()
	rec, _ := r.st.GetKey(ctx, k.KeyID)
	if len(rec.Versions) != 3 {
		t.Fatalf("store has %d versions", len(rec.Versions))
	}
	for _, v := range rec.Versions {
		if !r.tokenHas(v.ObjectID) {
			t.Fatalf("version %d has no token object", v.Number)
		}
	}
	r.restart()
	check()
	if pending, _ := r.st.PendingObjects(ctx); len(pending) != 0 {
		t.Fatalf("intents left: %v", pending)
	}

	// Automatic rotation: due RotateDays after the last rotation.
	if err := r.svc.EnableKeyRotation(ctx, k.KeyID, 7); err != nil {
		t.Fatal(err)
	}
	st, _ := r.svc.GetKeyRotationStatus(ctx, k.KeyID)
	if !st.KeyRotationEnabled || st.RotateDays != 7 || !st.NextRotateTime.Equal(st.LastRotateTime.Add(7*day)) {
		t.Fatalf("rotation status %+v", st)
	}
	clock.Advance(7*day - 2*time.Hour)
	if rep, err := r.svc.Maintain(ctx); err != nil || len(rep.Rotated) != 0 {
		t.Fatalf("rotated early: %+v %v", rep, err)
	}
	clock.Advance(2 * time.Hour)
	if rep, err := r.svc.Maintain(ctx); err != nil || len(rep.Rotated) != 1 {
		t.Fatalf("Maintain: %+v %v", rep, err)
	}
	if md, _ := r.svc.DescribeKey(ctx, k.KeyID); md.CurrentVersion != 4 || !md.NextRotateTime.Equal(clock.Now().Add(7*day)) {
		t.Fatalf("after automatic rotation %+v", md)
	}
	if rep, _ := r.svc.Maintain(ctx); len(rep.Rotated) != 0 {
		t.Fatal("rotated twice")
	}
	for _, days := range []int{6, 366, -1} {
		if err := r.svc.EnableKeyRotation(ctx, k.KeyID, days); !errors.Is(err, kms.ErrInvalidRotateDays) {
			t.Fatalf("RotateDays %d: %v", days, err)
		}
	}
}

func TestScheduledDeletion(t *testing.T) {
	clock := newTestClock()
	r := newRig(t, kms.Config{Clock: clock.Now})
	ctx := adminCtx()
	k := r.create("doomed")
	keep := r.create("kept")
	blob := r.encrypt(k.KeyID, []byte("data"), "")
	if _, err := r.svc.RotateKey(ctx, k.KeyID); err != nil {
		t.Fatal(err)
	}
	rec, _ := r.st.GetKey(ctx, k.KeyID)
	if _, err := r.svc.ScheduleKeyDeletion(ctx, k.KeyID, 7); !errors.Is(err, kms.ErrKeyShouldBeDisabled) {
		t.Fatalf("schedule an Enabled key: %v", err)
	}
	for _, days := range []int{6, 31, 0} {
		if _, err := r.svc.ScheduleKeyDeletion(ctx, k.KeyID, days); !errors.Is(err, kms.ErrInvalidPendingWindow) {
			t.Fatalf("window %d: %v", days, err)
		}
	}
	r.toState(k.KeyID, kms.StateDisabled)
	md, err := r.svc.ScheduleKeyDeletion(ctx, k.KeyID, 7)
	if err != nil || md.KeyState != kms.StatePendingDelete || !md.DeletionDate.Equal(clock.Now().Add(7*day)) {
		t.Fatalf("ScheduleKeyDeletion: %+v %v", md, err)
	}
	// Unusable from now on, and every refused use is logged as a warning.
	if _, err := r.decrypt(blob, ""); !errors.Is(err, kms.ErrKeyStateNotSupported) {
		t.Fatalf("decrypt while pending deletion: %v", err)
	}
	if !strings.Contains(r.logs.String(), "use of a key pending deletion refused") {
		t.Fatal("no warning logged")
	}
	// Restorable before the end.
	clock.Advance(7*day - time.Second)
	if rep, _ := r.svc.Maintain(ctx); len(rep.Purged) != 0 {
		t.Fatal("purged early")
	}
	if md, err := r.svc.CancelKeyDeletion(ctx, k.KeyID); err != nil || md.KeyState != kms.StateDisabled || !md.DeletionDate.IsZero() {
		t.Fatalf("CancelKeyDeletion: %+v %v", md, err)
	}
	if err := r.svc.EnableKey(ctx, k.KeyID); err != nil {
		t.Fatal(err)
	}
	if got, err := r.decrypt(blob, ""); err != nil || string(got) != "data" {
		t.Fatalf("decrypt after cancel: %v", err)
	}

	// Schedule again; the purge survives a restart and happens at the end.
	r.toState(k.KeyID, kms.StatePendingDelete)
	r.restart()
	clock.Advance(7 * day)
	if _, err := r.svc.CancelKeyDeletion(ctx, k.KeyID); !errors.Is(err, kms.ErrKeyStateNotSupported) {
		t.Fatalf("cancel after the window: %v", err)
	}
	rep, err := r.svc.Maintain(ctx)
	if err != nil || len(rep.Purged) != 1 || rep.Purged[0] != k.KeyID {
		t.Fatalf("Maintain: %+v %v", rep, err)
	}
	for _, v := range rec.Versions {
		if r.tokenHas(v.ObjectID) {
			t.Fatalf("version %d's token object survived the purge", v.Number)
		}
	}
	if !r.tokenHas(r.objectOf(keep.KeyID)) {
		t.Fatal("another key's object was destroyed")
	}
	if rep, err := r.svc.Recover(ctx); err != nil || len(rep.Orphans) != 0 || len(rep.Missing) != 0 {
		t.Fatalf("Recover after the purge: %+v %v", rep, err)
	}
	md, err = r.svc.DescribeKey(ctx, k.KeyID)
	if err != nil || md.KeyState != kms.StateDeleted || !md.DeletionDate.Equal(clock.Now()) {
		t.Fatalf("tombstone %+v %v", md, err)
	}
	if _, err := r.decrypt(blob, ""); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Fatalf("decrypt after purge: %v", err)
	}
	// Idempotent, and the tombstone survives a restart; the alias is free.
	if rep, err := r.svc.Maintain(ctx); err != nil || len(rep.Purged) != 0 {
		t.Fatalf("second Maintain: %+v %v", rep, err)
	}
	r.restart()
	if md, _ := r.svc.DescribeKey(ctx, k.KeyID); md.KeyState != kms.StateDeleted {
		t.Fatalf("after restart %+v", md)
	}
	if list, _ := r.svc.ListKeys(ctx, kms.ListKeysInput{}); list.TotalCount != 1 {
		t.Fatalf("ListKeys lists %d keys", list.TotalCount)
	}
	r.create("doomed")
}

func TestDataKeys(t *testing.T) {
	r := newRig(t, kms.Config{})
	ctx := adminCtx()
	a, b := r.create("dk-a"), r.create("dk-b")
	for _, tc := range []struct {
		spec string
		n    int
		want int
	}{{"AES_128", 0, 16}, {"AES_256", 0, 32}, {"", 1, 1}, {"AES_128", 1024, 1024}} {
		res, err := r.svc.GenerateDataKey(ctx, kms.GenerateDataKeyInput{KeyID: a.KeyID, KeySpec: tc.spec, NumberOfBytes: tc.n, EncryptionContext: `{"k":"v"}`})
		if err != nil || len(res.Plaintext) != tc.want || res.KeyID != a.KeyID {
			t.Fatalf("%+v: %d bytes, %v", tc, len(res.Plaintext), err)
		}
		got, err := r.decrypt(res.CiphertextBlob(), `{"k":"v"}`)
		if err != nil || !bytes.Equal(got, res.Plaintext) {
			t.Fatalf("data key blob does not decrypt: %v", err)
		}
	}
	for _, in := range []kms.GenerateDataKeyInput{
		{KeyID: a.KeyID}, {KeyID: a.KeyID, KeySpec: "AES_512"}, {KeyID: a.KeyID, NumberOfBytes: 1025},
	} {
		if _, err := r.svc.GenerateDataKey(ctx, in); !errors.Is(err, kms.ErrInvalidKeySpec) && !errors.Is(err, kms.ErrInvalidNumberOfBytes) {
			t.Fatalf("%+v: %v", in, err)
		}
	}
	x, err := r.svc.GenerateRandom(ctx, 1024)
	y, _ := r.svc.GenerateRandom(ctx, 1024)
	if err != nil || len(x) != 1024 || bytes.Equal(x, y) {
		t.Fatalf("GenerateRandom: %d %v", len(x), err)
	}
	for _, n := range []int{0, 1025} {
		if _, err := r.svc.GenerateRandom(ctx, n); !errors.Is(err, kms.ErrInvalidNumberOfBytes) {
			t.Fatalf("GenerateRandom(%d): %v", n, err)
		}
	}

	// ReEncrypt: to another key and context; to the same key, unchanged
	// until it rotates.
	blob := r.encrypt(a.KeyID, []byte("secret"), `{"x":"1"}`)
	re, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyID: b.KeyID, SourceEncryptionContext: `{"x":"1"}`, DestinationEncryptionContext: `{"y":"2"}`})
	if err != nil || !re.ReEncrypted || re.KeyID != b.KeyID || re.SourceKeyID != a.KeyID {
		t.Fatalf("ReEncrypt: %+v %v", re, err)
	}
	if got, err := r.decrypt(re.CiphertextBlob(), `{"y":"2"}`); err != nil || string(got) != "secret" {
		t.Fatalf("decrypt re-encrypted: %v", err)
	}
	if _, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyID: b.KeyID}); !errors.Is(err, kms.ErrDecrypt) {
		t.Fatalf("ReEncrypt with the wrong source context: %v", err)
	}
	same, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: `{"x":"1"}`, DestinationEncryptionContext: `{"x":"1"}`})
	if err != nil || same.ReEncrypted || same.CiphertextBlob() != blob {
		t.Fatalf("ReEncrypt to the same version: %+v %v", same, err)
	}
	if _, err := r.svc.RotateKey(ctx, a.KeyID); err != nil {
		t.Fatal(err)
	}
	fresh, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blob, SourceEncryptionContext: `{"x":"1"}`, DestinationEncryptionContext: `{"x":"1"}`})
	if err != nil || !fresh.ReEncrypted || fresh.KeyVersion != 2 {
		t.Fatalf("ReEncrypt after rotation: %+v %v", fresh, err)
	}
	if _, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyID: uuid.NewString()}); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Fatalf("ReEncrypt to an unknown key: %v", err)
	}
	for _, bad := range []string{"not-a-key-id", strings.ToUpper(b.KeyID), b.KeyID + " "} {
		if res, err := r.svc.ReEncrypt(ctx, kms.ReEncryptInput{CiphertextBlob: blob, DestinationKeyID: bad, SourceEncryptionContext: `{"x":"1"}`}); !errors.Is(err, kms.ErrInvalidKeyID) {
			t.Fatalf("ReEncrypt to the malformed key id %q: %+v %v", bad, res, err)
		}
	}
}

func TestUsageLimit(t *testing.T) {
	const limit = 5
	r := newRig(t, kms.Config{VersionUsageLimit: limit, UsageBatch: 2})
	ctx := adminCtx()
	k := r.create("usage")
	var blobs []string
	for i := 1; i <= limit; i++ {
		res, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: k.KeyID, Plaintext: []byte{byte(i)}})
		if err != nil || res.KeyVersion != 1 {
			t.Fatalf("encryption %d: %+v %v", i, res, err)
		}
		blobs = append(blobs, res.CiphertextBlob())
	}
	// Number limit+1 is served by a new version, made automatically.
	res, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: k.KeyID, Plaintext: []byte("next")})
	if err != nil || res.KeyVersion != 2 {
		t.Fatalf("encryption %d: %+v %v", limit+1, res, err)
	}
	if _, err := r.svc.GenerateDataKey(ctx, kms.GenerateDataKeyInput{KeyID: k.KeyID, KeySpec: "AES_256"}); err != nil {
		t.Fatal(err)
	}
	vs, err := r.svc.KeyVersions(ctx, k.KeyID)
	if err != nil || len(vs) != 2 || vs[0].EncryptionCount < limit || vs[1].EncryptionCount != 2 || !vs[1].Current {
		t.Fatalf("KeyVersions %+v %v", vs, err)
	}
	for _, b := range blobs {
		if _, err := r.decrypt(b, ""); err != nil {
			t.Fatalf("old blob: %v", err)
		}
	}
	// The reservation is durable: after a restart the count has not gone
	// backwards (it may be ahead by up to a batch).
	rec, _ := r.st.GetKey(ctx, k.KeyID)
	if rec.Versions[1].UsageReserved < 2 {
		t.Fatalf("reserved %d", rec.Versions[1].UsageReserved)
	}
	r.restart()
	vs2, _ := r.svc.KeyVersions(ctx, k.KeyID)
	for i := range vs {
		if vs2[i].EncryptionCount < vs[i].EncryptionCount || vs2[i].EncryptionCount > vs[i].EncryptionCount+2 {
			t.Fatalf("version %d: count %d before restart, %d after", i+1, vs[i].EncryptionCount, vs2[i].EncryptionCount)
		}
	}
}

// TestUsageConcurrent hammers a key with a small limit from many
// goroutines: no version ever serves more than the limit.
func TestUsageConcurrent(t *testing.T) {
	const limit, workers, each = 10, 8, 12
	r := newRig(t, kms.Config{VersionUsageLimit: limit, UsageBatch: 3})
	ctx := adminCtx()
	k := r.create("busy")
	var mu sync.Mutex
	perVersion := map[uint32]int{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range each {
				res, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				perVersion[res.KeyVersion]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	total := 0
	for v, n := range perVersion {
		if n > limit {
			t.Fatalf("version %d served %d encryptions, limit %d", v, n, limit)
		}
		total += n
	}
	if total != workers*each {
		t.Fatalf("served %d", total)
	}
}
