package kms

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"hsmkms/hsm"
	"hsmkms/store"
)

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

type env struct {
	h   *fakeHSM
	st  *fakeStore
	svc *Service
	log *syncBuffer
	cfg Config
}

func newEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	e := &env{h: newFakeHSM(), st: newFakeStore(), log: &syncBuffer{}}
	e.st.sealer = e.h
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	e.cfg = cfg
	e.restart(t)
	return e
}

// restart makes a new Service over the same HSM and store.
func (e *env) restart(t *testing.T) {
	t.Helper()
	svc, err := New(adminCtx, e.h, e.st, e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.svc = svc
}

func (e *env) create(t *testing.T, alias string) KeyMetadata {
	t.Helper()
	md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: alias})
	if err != nil {
		t.Fatalf("CreateKey(%q): %v", alias, err)
	}
	return md
}

func (e *env) encrypt(t *testing.T, keyID string, pt []byte, ec string) EncryptResult {
	t.Helper()
	r, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: keyID, Plaintext: pt, EncryptionContext: ec})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	return r
}

func (e *env) decrypt(blob, ec string) (DecryptResult, error) {
	return e.svc.Decrypt(adminCtx, DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
}

func errIs(err, target error) bool { return errors.Is(err, target) }

func TestCreateKeyValidation(t *testing.T) {
	e := newEnv(t, Config{})
	ok60 := "a" + strings.Repeat("b", 59)
	cases := []struct {
		in   CreateKeyInput
		want error
	}{
		{CreateKeyInput{Alias: ""}, ErrInvalidAlias},
		{CreateKeyInput{Alias: ok60 + "c"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "_a"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "-a"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "a b"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "a.b"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "é"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "kms-x"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "KMS-x"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "kms-"}, ErrInvalidAlias},
		{CreateKeyInput{Alias: "a", Description: strings.Repeat("x", 1025)}, ErrInvalidDesc},
		{CreateKeyInput{Alias: "a", Description: "\xff"}, ErrInvalidDesc},
		{CreateKeyInput{Alias: "a", KeyUsage: "SIGN_VERIFY"}, ErrInvalidKeyUsage},
		{CreateKeyInput{Alias: "a", KeyUsage: "encrypt_decrypt"}, ErrInvalidKeyUsage},
		{CreateKeyInput{Alias: "a", KeyUsage: "ASYMMETRIC_DECRYPT_RSA_4096"}, ErrInvalidKeyUsage},
		{CreateKeyInput{Alias: "a", KeyUsage: "ASYMMETRIC_DECRYPT_RSA_2048"}, ErrUnsupported}, // the fake HSM has no key pairs
		{CreateKeyInput{Alias: "a", KeyUsage: "ASYMMETRIC_SIGN_VERIFY_SM2"}, ErrUnsupported},
	}
	for _, c := range cases {
		if _, err := e.svc.CreateKey(adminCtx, c.in); !errIs(err, c.want) {
			t.Errorf("CreateKey(%q, %d-byte desc, %q) = %v, want %v", c.in.Alias, len(c.in.Description), c.in.KeyUsage, err, c.want)
		}
	}
	if e.h.count() != 0 || e.st.pendingCount() != 0 {
		t.Fatal("invalid input reached the HSM or the store")
	}
	for i, in := range []CreateKeyInput{
		{Alias: ok60},
		{Alias: "0abc_-Z"},
		{Alias: "kms"},
		{Alias: "kmsx-1"},
		{Alias: "k1", Description: strings.Repeat("é", 512), KeyUsage: "ENCRYPT_DECRYPT"},
		{Alias: "k2", KeyUsage: "ENCRYPT/DECRYPT"},
	} {
		md, err := e.svc.CreateKey(adminCtx, in)
		if err != nil {
			t.Fatalf("%d: CreateKey(%q): %v", i, in.Alias, err)
		}
		if md.KeyUsage != DefaultKeyUsage {
			t.Errorf("usage %q", md.KeyUsage)
		}
	}
}

func TestCreateKey(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	e := newEnv(t, Config{Clock: func() time.Time { return now }})
	md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "orders", Description: "d"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := uuid.Parse(md.KeyID)
	if err != nil || u.String() != md.KeyID || u.Version() != 4 {
		t.Fatalf("key id %q: %v", md.KeyID, err)
	}
	want := KeyMetadata{KeyID: md.KeyID, Alias: "orders", Description: "d", KeyUsage: DefaultKeyUsage,
		KeyState: StateEnabled, Origin: OriginTencentKMS, CreateTime: now, CurrentVersion: 1}
	if md != want {
		t.Fatalf("metadata %+v, want %+v", md, want)
	}
	rec, err := e.st.GetKey(adminCtx, md.KeyID)
	if err != nil || len(rec.Versions) != 1 || len(rec.Versions[0].ObjectID) != 16 {
		t.Fatalf("store record %+v: %v", rec, err)
	}
	if !e.h.has(rec.Versions[0].ObjectID) || e.h.labels[string(rec.Versions[0].ObjectID)] != md.KeyID+"/v1" {
		t.Fatal("token object missing or mislabelled")
	}
	if e.st.pendingCount() != 0 {
		t.Fatal("intent left behind")
	}
	got, err := e.svc.DescribeKey(adminCtx, md.KeyID)
	if err != nil || got != md {
		t.Fatalf("DescribeKey %+v %v", got, err)
	}
	// Alias taken.
	if _, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "orders"}); !errIs(err, ErrAliasExists) {
		t.Fatalf("duplicate alias: %v", err)
	}
	// Aliases are case-sensitive.
	e.create(t, "Orders")
	// Survives a restart.
	e.restart(t)
	got, err = e.svc.DescribeKey(adminCtx, md.KeyID)
	if err != nil || got != md {
		t.Fatalf("after restart %+v %v", got, err)
	}
	list, _ := e.svc.ListKeys(adminCtx, ListKeysInput{})
	if len(list.Keys) != 2 || list.TotalCount != 2 {
		t.Fatalf("ListKeys %d", len(list.Keys))
	}
}

func TestCreateKeyLimit(t *testing.T) {
	e := newEnv(t, Config{KeyLimit: 2})
	a := e.create(t, "a")
	e.create(t, "b")
	if _, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "c"}); !errIs(err, ErrLimitExceeded) {
		t.Fatalf("third key: %v", err)
	}
	if e.h.count() != 2 {
		t.Fatal("limit checked after touching the HSM")
	}
	// Deleted keys do not count.
	e.st.setState(a.KeyID, StateDeleted)
	e.restart(t)
	// A Deleted key's alias is free again, as in the store.
	a2 := e.create(t, "a")
	e.restart(t)
	if md, err := e.svc.DescribeKey(adminCtx, a.KeyID); err != nil || md.KeyState != StateDeleted {
		t.Fatalf("deleted key: %+v %v", md, err)
	}
	if md, err := e.svc.DescribeKey(adminCtx, a2.KeyID); err != nil || md.Alias != "a" {
		t.Fatalf("reused alias: %+v %v", md, err)
	}
	if _, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "d"}); !errIs(err, ErrLimitExceeded) {
		t.Fatalf("fourth key: %v", err)
	}
}

func TestCreateKeyConcurrentSameAlias(t *testing.T) {
	e := newEnv(t, Config{})
	var ok, exists atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "same"})
			switch {
			case err == nil:
				ok.Add(1)
			case errIs(err, ErrAliasExists):
				exists.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 1 || exists.Load() != 15 || e.h.count() != 1 {
		t.Fatalf("ok %d exists %d objects %d", ok.Load(), exists.Load(), e.h.count())
	}
}

func TestCreateKeyConcurrentLimit(t *testing.T) {
	e := newEnv(t, Config{KeyLimit: 5})
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: fmt.Sprintf("k%d", i)})
			if err == nil {
				ok.Add(1)
			} else if !errIs(err, ErrLimitExceeded) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if ok.Load() != 5 || e.h.count() != 5 {
		t.Fatalf("created %d, objects %d", ok.Load(), e.h.count())
	}
}

func TestCreateKeyFailures(t *testing.T) {
	boom := errors.New("boom")
	t.Run("intent fails", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.st.addPendingErr = func() error { return boom }
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrInternal) || !errIs(err, boom) {
			t.Fatal(err)
		}
		if e.h.count() != 0 {
			t.Fatal("object made without an intent")
		}
		e.st.addPendingErr = nil
		e.create(t, "a") // reservation released
	})
	t.Run("generate busy", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.h.genErr = func() error { return fmt.Errorf("wrapped: %w", hsm.ErrBusy) }
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrBusy) {
			t.Fatal(err)
		}
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("not rolled back")
		}
	})
	t.Run("generate fails after acting", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.h.genAfter = func() error { return hsm.ErrUnavailable }
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrUnavailable) {
			t.Fatal(err)
		}
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("not rolled back")
		}
	})
	t.Run("generate unexpected", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.h.genErr = func() error { return hsm.ErrInvalidInput }
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrInternal) {
			t.Fatal(err)
		}
	})
	t.Run("commit fails", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.st.createErr = func() error { return boom }
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrInternal) || !errIs(err, boom) {
			t.Fatal(err)
		}
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("not rolled back")
		}
		if l, _ := e.svc.ListKeys(adminCtx, ListKeysInput{}); len(l.Keys) != 0 {
			t.Fatal("key reported")
		}
		e.st.createErr = nil
		e.create(t, "a")
	})
	t.Run("commit fails but committed", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.st.createErr = func() error { return boom }
		e.st.createCommits = true
		md, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if err != nil {
			t.Fatal(err)
		}
		if e.h.count() != 1 {
			t.Fatal("material of a committed key destroyed")
		}
		r := e.encrypt(t, md.KeyID, []byte("x"), "")
		if _, err := e.decrypt(r.CiphertextBlob(), ""); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("commit outcome unknown", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.st.createErr = func() error { return boom }
		e.st.getErr = func() error { return boom }
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrInternal) {
			t.Fatal(err)
		}
		if e.h.count() != 1 || e.st.pendingCount() != 1 {
			t.Fatal("object destroyed or intent dropped although the commit may have happened")
		}
		e.st.createErr, e.st.getErr = nil, nil
		rep, err := e.svc.Recover(adminCtx)
		if err != nil || len(rep.RolledBack) != 1 {
			t.Fatalf("Recover %+v %v", rep, err)
		}
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("Recover did not roll back")
		}
	})
	t.Run("store alias conflict", func(t *testing.T) {
		e := newEnv(t, Config{})
		// Another writer took the alias behind the cache's back.
		e.st.put(store.Key{ID: uuid.NewString(), Alias: "a", State: StateEnabled,
			Versions: []store.Version{{Number: 1, ObjectID: []byte("x")}}})
		_, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
		if !errIs(err, ErrAliasExists) {
			t.Fatal(err)
		}
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("not rolled back")
		}
	})
	t.Run("rollback destroy fails", func(t *testing.T) {
		e := newEnv(t, Config{})
		e.st.createErr = func() error { return boom }
		e.h.destroyErr = func() error { return hsm.ErrUnavailable }
		if _, err := e.svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"}); err == nil {
			t.Fatal("no error")
		}
		if e.st.pendingCount() != 1 {
			t.Fatal("intent dropped although the object survived")
		}
		e.h.destroyErr = nil
		e.restart(t) // New runs Recover
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("restart did not roll back")
		}
	})
	t.Run("cancelled context still rolls back", func(t *testing.T) {
		e := newEnv(t, Config{})
		ctx, cancel := context.WithCancel(adminCtx)
		e.h.genAfter = func() error { cancel(); return context.Canceled }
		_, err := e.svc.CreateKey(ctx, CreateKeyInput{Alias: "a"})
		if !errIs(err, context.Canceled) {
			t.Fatal(err)
		}
		if e.h.count() != 0 || e.st.pendingCount() != 0 {
			t.Fatal("not rolled back")
		}
	})
}

func TestEncryptDecrypt(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	other := e.create(t, "b")
	ctx := `{"b":"2","a":"1"}`
	for _, pt := range [][]byte{{0}, []byte("hello"), bytes.Repeat([]byte{7}, MaxPlaintext)} {
		r := e.encrypt(t, k.KeyID, pt, ctx)
		if r.KeyID != k.KeyID || r.KeyVersion != 1 {
			t.Fatalf("result %+v", r)
		}
		env, err := ParseBlob(r.CiphertextBlob())
		if err != nil || env.KeyID != uuid.MustParse(k.KeyID) || env.KeyVersion != 1 || len(env.Sealed) != len(pt)+16 {
			t.Fatalf("blob: %v", err)
		}
		d, err := e.decrypt(r.CiphertextBlob(), `{"a":"1", "b":"2"}`)
		if err != nil || !bytes.Equal(d.Plaintext, pt) || d.KeyID != k.KeyID || d.KeyVersion != 1 {
			t.Fatalf("Decrypt: %v", err)
		}
	}
	r := e.encrypt(t, k.KeyID, []byte("secret"), ctx)
	for _, wrong := range []string{"", "{}", `{"a":"1"}`, `{"a":"1","b":"3"}`, `{"a":"1","b":"2","c":"3"}`, `{"a1":"","b":"2"}`} {
		if _, err := e.decrypt(r.CiphertextBlob(), wrong); !errIs(err, ErrDecrypt) {
			t.Errorf("context %q: %v", wrong, err)
		}
	}
	// No context and {} are interchangeable.
	r0 := e.encrypt(t, k.KeyID, []byte("x"), "")
	if _, err := e.decrypt(r0.CiphertextBlob(), "{}"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.decrypt(r0.CiphertextBlob(), `{"a":"b"}`); !errIs(err, ErrDecrypt) {
		t.Fatal(err)
	}
	// Each encryption uses a fresh IV.
	if e.encrypt(t, k.KeyID, []byte("x"), "").CiphertextBlob() == r0.CiphertextBlob() {
		t.Fatal("deterministic ciphertext")
	}

	raw, _ := base64.StdEncoding.DecodeString(r.CiphertextBlob())
	re := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	// Relabel to another existing key: does not authenticate.
	b := bytes.Clone(raw)
	o := uuid.MustParse(other.KeyID)
	copy(b[1:17], o[:])
	if _, err := e.decrypt(re(b), ctx); !errIs(err, ErrDecrypt) {
		t.Fatalf("relabelled key: %v", err)
	}
	// Relabel to an unknown key.
	b = bytes.Clone(raw)
	b[5] ^= 1
	if _, err := e.decrypt(re(b), ctx); !errIs(err, ErrKeyNotFound) {
		t.Fatalf("unknown key: %v", err)
	}
	// A version the key does not have.
	b = bytes.Clone(raw)
	binary.BigEndian.PutUint32(b[17:21], 2)
	if _, err := e.decrypt(re(b), ctx); !errIs(err, ErrInvalidCiphertext) {
		t.Fatalf("unknown version: %v", err)
	}
	// Every bit flip in IV, ciphertext and tag is detected.
	for i := 22; i < len(raw); i++ {
		b = bytes.Clone(raw)
		b[i] ^= 0x80
		if _, err := e.decrypt(re(b), ctx); !errIs(err, ErrDecrypt) {
			t.Fatalf("flip at %d: %v", i, err)
		}
	}
	// Truncation.
	if _, err := e.decrypt(re(raw[:len(raw)-1]), ctx); !errIs(err, ErrDecrypt) && !errIs(err, ErrInvalidCiphertext) {
		t.Fatalf("truncated: %v", err)
	}
	if _, err := e.decrypt(re(raw[:40]), ctx); !errIs(err, ErrInvalidCiphertext) {
		t.Fatalf("truncated: %v", err)
	}
	if _, err := e.decrypt(r.CiphertextBlob(), `{"a":1}`); !errIs(err, ErrInvalidContext) {
		t.Fatalf("bad context: %v", err)
	}
	if _, err := e.decrypt("not base64!", ""); !errIs(err, ErrInvalidCiphertext) {
		t.Fatal(err)
	}
}

func TestEncryptValidation(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	up := strings.ToUpper(k.KeyID)
	cases := []struct {
		in   EncryptInput
		want error
	}{
		{EncryptInput{KeyID: "", Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: "a", Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: up, Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: "{" + k.KeyID + "}", Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: "urn:uuid:" + k.KeyID, Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: strings.ReplaceAll(k.KeyID, "-", ""), Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: k.KeyID[:35] + "g", Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: strings.Replace(k.KeyID, "-", "x", 1), Plaintext: []byte("x")}, ErrInvalidKeyID},
		{EncryptInput{KeyID: k.KeyID}, ErrPlaintextEmpty},
		{EncryptInput{KeyID: k.KeyID, Plaintext: []byte{}}, ErrPlaintextEmpty},
		{EncryptInput{KeyID: k.KeyID, Plaintext: make([]byte, MaxPlaintext+1)}, ErrPlaintextTooLong},
		{EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x"), EncryptionContext: "[]"}, ErrInvalidContext},
		{EncryptInput{KeyID: uuid.NewString(), Plaintext: []byte("x")}, ErrKeyNotFound},
	}
	for i, c := range cases {
		if _, err := e.svc.Encrypt(adminCtx, c.in); !errIs(err, c.want) {
			t.Errorf("%d: Encrypt(%q) = %v, want %v", i, c.in.KeyID, err, c.want)
		}
	}
	if _, err := e.svc.DescribeKey(adminCtx, up); !errIs(err, ErrInvalidKeyID) {
		t.Fatal(err)
	}
	if _, err := e.svc.DescribeKey(adminCtx, uuid.NewString()); !errIs(err, ErrKeyNotFound) {
		t.Fatal(err)
	}
}

func TestParseKeyID(t *testing.T) {
	for range 100 {
		u := uuid.New()
		got, ok := parseKeyID(u.String())
		if !ok || got != u {
			t.Fatalf("%s", u)
		}
	}
	if n := testing.AllocsPerRun(100, func() { parseKeyID("0d3c6a4e-8f5b-4a3c-9d2e-1f0a2b3c4d5e") }); n != 0 {
		t.Fatalf("allocs %v", n)
	}
}

func TestKeyStates(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	blob := e.encrypt(t, k.KeyID, []byte("x"), "").CiphertextBlob()
	cases := []struct {
		state          string
		encErr, decErr error
	}{
		{StateEnabled, nil, nil},
		{StateDisabled, ErrKeyDisabled, ErrKeyDisabled},
		{StateArchived, ErrKeyArchived, nil},
		{StatePendingDelete, ErrKeyStateNotSupported, ErrKeyStateNotSupported},
		{StateDeleted, ErrKeyNotFound, ErrKeyNotFound},
	}
	for _, c := range cases {
		e.st.setState(k.KeyID, c.state)
		e.restart(t)
		_, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")})
		if !errIs(err, c.encErr) || (c.encErr == nil) != (err == nil) {
			t.Errorf("%s: Encrypt %v, want %v", c.state, err, c.encErr)
		}
		_, err = e.decrypt(blob, "")
		if !errIs(err, c.decErr) || (c.decErr == nil) != (err == nil) {
			t.Errorf("%s: Decrypt %v, want %v", c.state, err, c.decErr)
		}
		md, err := e.svc.DescribeKey(adminCtx, k.KeyID)
		if err != nil || md.KeyState != c.state {
			t.Errorf("%s: DescribeKey %+v %v", c.state, md, err)
		}
	}
}

func TestMultipleVersions(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	v1 := e.encrypt(t, k.KeyID, []byte("one"), "").CiphertextBlob()
	// Add version 2 behind the service (no rotation API yet).
	obj2 := []byte("object-2-------!")
	if err := e.h.GenerateKey(adminCtx, obj2, k.KeyID+"/v2"); err != nil {
		t.Fatal(err)
	}
	rec, _ := e.st.GetKey(adminCtx, k.KeyID)
	rec.Versions = append(rec.Versions, store.Version{Number: 2, ObjectID: obj2})
	e.st.put(rec)
	e.restart(t)

	r2 := e.encrypt(t, k.KeyID, []byte("two"), "")
	if r2.KeyVersion != 2 {
		t.Fatalf("encrypted under version %d", r2.KeyVersion)
	}
	if md, _ := e.svc.DescribeKey(adminCtx, k.KeyID); md.CurrentVersion != 2 {
		t.Fatalf("CurrentVersion %d", md.CurrentVersion)
	}
	for blob, want := range map[string]string{v1: "one", r2.CiphertextBlob(): "two"} {
		d, err := e.decrypt(blob, "")
		if err != nil || string(d.Plaintext) != want {
			t.Fatalf("decrypt: %q %v", d.Plaintext, err)
		}
	}
	// Relabel a v1 blob as v2 (and vice versa): the header is authenticated.
	for blob, to := range map[string]uint32{v1: 2, r2.CiphertextBlob(): 1} {
		raw, _ := base64.StdEncoding.DecodeString(blob)
		binary.BigEndian.PutUint32(raw[17:21], to)
		if _, err := e.decrypt(base64.StdEncoding.EncodeToString(raw), ""); !errIs(err, ErrDecrypt) {
			t.Fatalf("relabelled to v%d: %v", to, err)
		}
	}
}

func TestHSMErrorMapping(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	blob := e.encrypt(t, k.KeyID, []byte("x"), "").CiphertextBlob()
	cases := []struct {
		hsmErr  error
		want    error
		notWant error
	}{
		{fmt.Errorf("p11: %w", hsm.ErrBusy), ErrBusy, nil},
		{fmt.Errorf("p11: %w", hsm.ErrUnavailable), ErrUnavailable, nil},
		{fmt.Errorf("p11: %w", hsm.ErrLogin), ErrUnavailable, nil},
		{fmt.Errorf("p11: %w", hsm.ErrKeyNotFound), ErrInternal, ErrKeyNotFound},
		{fmt.Errorf("p11: %w", hsm.ErrKeyNotFound), ErrInternal, hsm.ErrKeyNotFound},
		{errors.New("weird"), ErrInternal, nil},
		{context.DeadlineExceeded, context.DeadlineExceeded, nil},
	}
	for _, c := range cases {
		e.h.sealErr = func() error { return c.hsmErr }
		e.h.openErr = e.h.sealErr
		_, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")})
		if !errIs(err, c.want) || (c.notWant != nil && errIs(err, c.notWant)) {
			t.Errorf("Seal %v: got %v", c.hsmErr, err)
		}
		_, err = e.decrypt(blob, "")
		if !errIs(err, c.want) || (c.notWant != nil && errIs(err, c.notWant)) {
			t.Errorf("Open %v: got %v", c.hsmErr, err)
		}
	}
	e.h.sealErr, e.h.openErr = nil, func() error { return hsm.ErrNotAuthentic }
	if _, err := e.decrypt(blob, ""); err != ErrDecrypt {
		t.Fatalf("ErrNotAuthentic: %v", err)
	}
	e.h.openErr = func() error { return hsm.ErrInvalidInput }
	if _, err := e.decrypt(blob, ""); !errIs(err, ErrInvalidCiphertext) {
		t.Fatalf("ErrInvalidInput: %v", err)
	}
	// The token lost the object for real.
	e.h.openErr = nil
	rec, _ := e.st.GetKey(adminCtx, k.KeyID)
	e.h.DestroyKey(adminCtx, rec.Versions[0].ObjectID)
	if _, err := e.decrypt(blob, ""); !errIs(err, ErrInternal) {
		t.Fatal(err)
	}
	if !strings.Contains(e.log.String(), "level=ERROR") {
		t.Fatal("missing object not logged at Error")
	}
}

func TestRecover(t *testing.T) {
	ctx := adminCtx
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	rec, _ := e.st.GetKey(ctx, k.KeyID)

	// 1. Crash after CreateKey committed but before the intent went away
	// (cannot happen with a transactional store, but Recover must cope).
	e.st.addIntent(store.PendingObject{ObjectID: rec.Versions[0].ObjectID, KeyID: k.KeyID, Version: 1})
	// 2. Crash after GenerateKey, before the commit.
	crashed := []byte("crashed-object-1")
	crashedKey := uuid.NewString()
	e.st.addIntent(store.PendingObject{ObjectID: crashed, KeyID: crashedKey, Version: 1})
	e.h.GenerateKey(ctx, crashed, crashedKey+"/v1")
	// 3. Crash after the intent, before GenerateKey.
	never := []byte("never-created-01")
	e.st.addIntent(store.PendingObject{ObjectID: never, KeyID: uuid.NewString(), Version: 1})
	// 4. An orphan: on the token, unknown to the store.
	orphan := []byte("orphan-object-01")
	e.h.GenerateKey(ctx, orphan, "x/v1")
	// 5. A key version whose object is missing.
	lost := store.Key{ID: uuid.NewString(), Alias: "lost", State: StateEnabled, Usage: DefaultKeyUsage,
		Versions: []store.Version{{Number: 1, ObjectID: []byte("lost-object-0001")}}}
	e.st.put(lost)
	// 6. A Deleted key whose object is gone: not a finding.
	e.st.put(store.Key{ID: uuid.NewString(), Alias: "gone", State: StateDeleted,
		Versions: []store.Version{{Number: 1, ObjectID: []byte("gone-object-0001")}}})

	e.log.mu.Lock()
	e.log.b.Reset()
	e.log.mu.Unlock()
	rep, err := e.svc.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Committed != 1 || len(rep.RolledBack) != 2 || len(rep.Unresolved) != 0 {
		t.Fatalf("report %+v", rep)
	}
	if len(rep.Orphans) != 1 || !bytes.Equal(rep.Orphans[0], orphan) {
		t.Fatalf("orphans %q", rep.Orphans)
	}
	if len(rep.Missing) != 1 || rep.Missing[0].KeyID != lost.ID || rep.Missing[0].Version != 1 {
		t.Fatalf("missing %+v", rep.Missing)
	}
	if e.st.pendingCount() != 0 || e.h.has(crashed) || !e.h.has(orphan) || !e.h.has(rec.Versions[0].ObjectID) {
		t.Fatal("wrong objects destroyed or intents left")
	}
	logs := e.log.String()
	if !strings.Contains(logs, fmt.Sprintf("%x", orphan)) || !strings.Contains(logs, "level=WARN") {
		t.Fatalf("orphan not logged at Warn:\n%s", logs)
	}
	if !strings.Contains(logs, "level=ERROR") || !strings.Contains(logs, lost.ID) {
		t.Fatalf("missing object not logged at Error:\n%s", logs)
	}
	// The committed key still works.
	r := e.encrypt(t, k.KeyID, []byte("x"), "")
	if _, err := e.decrypt(r.CiphertextBlob(), ""); err != nil {
		t.Fatal(err)
	}

	// Idempotent.
	rep2, err := e.svc.Recover(ctx)
	if err != nil || rep2.Committed != 0 || len(rep2.RolledBack) != 0 || len(rep2.Orphans) != 1 || len(rep2.Missing) != 1 {
		t.Fatalf("second run %+v %v", rep2, err)
	}
}

func TestRecoverFailures(t *testing.T) {
	ctx := adminCtx
	e := newEnv(t, Config{})
	obj := []byte("pending-object-1")
	e.st.addIntent(store.PendingObject{ObjectID: obj, KeyID: uuid.NewString(), Version: 1})
	e.h.GenerateKey(ctx, obj, "x")
	e.h.destroyErr = func() error { return hsm.ErrUnavailable }
	rep, err := e.svc.Recover(ctx)
	if !errIs(err, ErrUnavailable) || len(rep.Unresolved) != 1 || len(rep.Orphans) != 0 {
		t.Fatalf("%+v %v", rep, err)
	}
	if e.st.pendingCount() != 1 {
		t.Fatal("intent dropped")
	}
	// New tolerates an incomplete recovery.
	e.restart(t)
	e.h.destroyErr = nil
	e.st.getErr = func() error { return errors.New("db down") }
	rep, err = e.svc.Recover(ctx)
	if err == nil || len(rep.Unresolved) != 1 || !e.h.has(obj) {
		t.Fatalf("%+v %v", rep, err)
	}
	e.st.getErr = nil
	if _, err := e.svc.Recover(ctx); err != nil || e.h.has(obj) || e.st.pendingCount() != 0 {
		t.Fatal(err)
	}
	e.h.listErr = func() error { return hsm.ErrUnavailable }
	if _, err := e.svc.Recover(ctx); !errIs(err, ErrUnavailable) {
		t.Fatal(err)
	}
}

func TestNewRejectsBadMetadata(t *testing.T) {
	for name, k := range map[string]store.Key{
		"non-canonical id": {ID: strings.ToUpper(uuid.NewString()), Alias: "a", Versions: []store.Version{{Number: 1, ObjectID: []byte{1}}}},
		"no versions":      {ID: uuid.NewString(), Alias: "a"},
		"version zero":     {ID: uuid.NewString(), Alias: "a", Versions: []store.Version{{Number: 0, ObjectID: []byte{1}}}},
		"no object id":     {ID: uuid.NewString(), Alias: "a", Versions: []store.Version{{Number: 1}}},
	} {
		st := newFakeStore()
		st.put(k)
		if _, err := New(adminCtx, newFakeHSM(), st, Config{Logger: slog.New(slog.DiscardHandler)}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	st := newFakeStore()
	st.listErr = func() error { return errors.New("db down") }
	if _, err := New(adminCtx, newFakeHSM(), st, Config{Logger: slog.New(slog.DiscardHandler)}); err == nil {
		t.Error("store failure ignored")
	}
}

// TestNoSecretsInLogs exercises every path that logs and checks that no
// plaintext, context value or ciphertext reaches the log.
func TestNoSecretsInLogs(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	const secret = "TOPSECRETPLAINTEXT"
	const ctxVal = "CONTEXTVALUE42"
	ec := `{"k":"` + ctxVal + `"}`
	r := e.encrypt(t, k.KeyID, []byte(secret), ec)
	e.decrypt(r.CiphertextBlob(), ec)
	e.decrypt(r.CiphertextBlob(), `{"k":"other"}`)
	for _, fail := range []error{hsm.ErrKeyNotFound, errors.New("weird"), hsm.ErrLogin} {
		e.h.sealErr = func() error { return fail }
		e.h.openErr = e.h.sealErr
		e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: []byte(secret), EncryptionContext: ec})
		e.decrypt(r.CiphertextBlob(), ec)
	}
	logs := e.log.String()
	for _, s := range []string{secret, ctxVal, r.CiphertextBlob()[:20]} {
		if strings.Contains(logs, s) {
			t.Fatalf("log contains %q:\n%s", s, logs)
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	e := newEnv(t, Config{})
	k := e.create(t, "a")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				pt := []byte(fmt.Sprintf("%d-%d", i, j))
				ec := fmt.Sprintf(`{"i":"%d"}`, i)
				r, err := e.svc.Encrypt(adminCtx, EncryptInput{KeyID: k.KeyID, Plaintext: pt, EncryptionContext: ec})
				if err != nil {
					t.Error(err)
					return
				}
				d, err := e.decrypt(r.CiphertextBlob(), ec)
				if err != nil || !bytes.Equal(d.Plaintext, pt) {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			e.create(t, fmt.Sprintf("c%d", i))
		}()
		go func() {
			defer wg.Done()
			if _, err := e.svc.Recover(adminCtx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if e.st.pendingCount() != 0 || e.h.count() != 5 {
		t.Fatalf("pending %d objects %d", e.st.pendingCount(), e.h.count())
	}
}

func BenchmarkEncrypt(b *testing.B) {
	h, st := newFakeHSM(), newFakeStore()
	svc, err := New(adminCtx, h, st, Config{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	k, err := svc.CreateKey(adminCtx, CreateKeyInput{Alias: "a"})
	if err != nil {
		b.Fatal(err)
	}
	in := EncryptInput{KeyID: k.KeyID, Plaintext: make([]byte, 256)}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := svc.Encrypt(adminCtx, in); err != nil {
			b.Fatal(err)
		}
	}
}

// EnableKeys and DisableKeys change every key or none: a store failure on
// the second key's write leaves the first as it was, in the store and in
// memory.
func TestBatchStateChangeAllOrNone(t *testing.T) {
	e := newEnv(t, Config{})
	a, b := e.create(t, "batch-a"), e.create(t, "batch-b")
	e.st.failUpdate(2)
	if err := e.svc.DisableKeys(adminCtx, []string{a.KeyID, b.KeyID}); err == nil {
		t.Fatal("DisableKeys with a failing second write succeeded")
	}
	e.st.updateErr = nil
	for _, k := range []KeyMetadata{a, b} {
		stored, _ := e.st.GetKey(adminCtx, k.KeyID)
		md, err := e.svc.DescribeKey(adminCtx, k.KeyID)
		if stored.State != StateEnabled || err != nil || md.KeyState != StateEnabled {
			t.Fatalf("%s after a failed batch: stored %s, served %s %v", k.KeyID, stored.State, md.KeyState, err)
		}
	}
	if err := e.svc.DisableKeys(adminCtx, []string{a.KeyID, b.KeyID}); err != nil {
		t.Fatal(err)
	}
	for _, k := range []KeyMetadata{a, b} {
		if md, _ := e.svc.DescribeKey(adminCtx, k.KeyID); md.KeyState != StateDisabled {
			t.Fatalf("%s after DisableKeys: %s", k.KeyID, md.KeyState)
		}
	}
}
