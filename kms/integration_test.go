package kms_test

// Integration tests of kms.Service over the real SQLite store and a real
// SoftHSM2 token through hsm/p11. They are not parallel: softhsm.NewToken
// sets SOFTHSM2_CONF for the test.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"hsmkms/hsm"
	"hsmkms/hsm/p11"
	"hsmkms/kms"
	"hsmkms/softhsm"
	"hsmkms/store"
)

// rig owns one token and one database file across restarts.
type rig struct {
	t      *testing.T
	tok    softhsm.Token
	dbPath string
	cfg    kms.Config
	logs   *lockedBuffer

	h   *p11.Token
	st  *store.SQLite
	svc *kms.Service
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newRig(t *testing.T, cfg kms.Config) *rig {
	t.Helper()
	r := &rig{t: t, tok: softhsm.NewToken(t), dbPath: filepath.Join(t.TempDir(), "kms.db"), logs: &lockedBuffer{}}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(r.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r.cfg = cfg
	r.open()
	t.Cleanup(r.close)
	return r
}

// openDeps opens the token and the store without a Service.
func (r *rig) openDeps() {
	r.t.Helper()
	ctx := adminCtx()
	h, err := p11.OpenToken(ctx, p11.Config{ModulePath: r.tok.Module, TokenLabel: r.tok.Label, PIN: r.tok.PIN, Sessions: 2})
	if err != nil {
		r.t.Fatalf("OpenToken: %v", err)
	}
	r.h = h
	st, err := store.Open(ctx, r.dbPath)
	if err != nil {
		r.t.Fatalf("store.Open: %v", err)
	}
	r.st = st
}

func (r *rig) open() {
	r.t.Helper()
	r.openDeps()
	r.startService()
}

func (r *rig) startService() {
	r.t.Helper()
	svc, err := kms.New(adminCtx(), r.h, r.st, r.cfg)
	if err != nil {
		r.t.Fatalf("kms.New: %v", err)
	}
	r.svc = svc
}

func (r *rig) close() {
	r.svc = nil
	if r.st != nil {
		if err := r.st.Close(); err != nil {
			r.t.Errorf("store close: %v", err)
		}
		r.st = nil
	}
	if r.h != nil {
		if err := r.h.Close(); err != nil {
			r.t.Errorf("token close: %v", err)
		}
		r.h = nil
	}
}

func (r *rig) restart() {
	r.t.Helper()
	r.close()
	r.open()
}

func (r *rig) create(alias string) kms.KeyMetadata {
	r.t.Helper()
	md, err := r.svc.CreateKey(adminCtx(), kms.CreateKeyInput{Alias: alias, Description: "test key"})
	if err != nil {
		r.t.Fatalf("CreateKey(%q): %v", alias, err)
	}
	return md
}

func (r *rig) encrypt(keyID string, pt []byte, ec string) string {
	r.t.Helper()
	res, err := r.svc.Encrypt(adminCtx(), kms.EncryptInput{KeyID: keyID, Plaintext: pt, EncryptionContext: ec})
	if err != nil {
		r.t.Fatalf("Encrypt: %v", err)
	}
	if res.KeyID != keyID || res.KeyVersion != 1 {
		r.t.Fatalf("Encrypt result %+v", res)
	}
	return res.CiphertextBlob()
}

func (r *rig) decrypt(blob, ec string) ([]byte, error) {
	res, err := r.svc.Decrypt(adminCtx(), kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: ec})
	return res.Plaintext, err
}

func (r *rig) tokenHas(objectID []byte) bool {
	r.t.Helper()
	ids, err := r.h.KeyIDs(adminCtx())
	if err != nil {
		r.t.Fatalf("KeyIDs: %v", err)
	}
	for _, id := range ids {
		if bytes.Equal(id, objectID) {
			return true
		}
	}
	return false
}

func (r *rig) objectOf(keyID string) []byte {
	r.t.Helper()
	k, err := r.st.GetKey(adminCtx(), keyID)
	if err != nil || len(k.Versions) != 1 {
		r.t.Fatalf("GetKey: %+v %v", k, err)
	}
	return k.Versions[0].ObjectID
}

func reencode(blob string, f func(b []byte)) string {
	b, err := base64.StdEncoding.DecodeString(blob)
	if err != nil {
		panic(err)
	}
	f(b)
	return base64.StdEncoding.EncodeToString(b)
}

func TestIntegrationRoundTrip(t *testing.T) {
	r := newRig(t, kms.Config{})
	k := r.create("orders")
	if k.KeyState != kms.StateEnabled || k.CurrentVersion != 1 || k.KeyUsage != kms.DefaultKeyUsage {
		t.Fatalf("metadata %+v", k)
	}
	if !r.tokenHas(r.objectOf(k.KeyID)) {
		t.Fatal("no token object")
	}

	for _, pt := range [][]byte{{0}, []byte("hello, world"), bytes.Repeat([]byte{0xee}, kms.MaxPlaintext)} {
		blob := r.encrypt(k.KeyID, pt, "")
		got, err := r.decrypt(blob, "")
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("round trip of %d bytes: %v", len(pt), err)
		}
	}

	const ec = `{"tenant":"acme","purpose":"backup","n":"1"}`
	pt := []byte("with context")
	blob := r.encrypt(k.KeyID, pt, ec)
	// Another key order, other white space.
	got, err := r.decrypt(blob, `{ "n":"1", "purpose":"backup", "tenant":"acme" }`)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("reordered context: %v", err)
	}
	// Changed, partial, extra or missing context: ErrDecrypt.
	for _, wrong := range []string{
		"", "{}",
		`{"tenant":"acme","purpose":"backup"}`,
		`{"tenant":"acme","purpose":"backup","n":"2"}`,
		`{"tenant":"acme","purpose":"backup","n":"1","x":""}`,
		`{"tenant":"acm","purpose":"ebackup","n":"1"}`,
	} {
		if _, err := r.decrypt(blob, wrong); !errors.Is(err, kms.ErrDecrypt) {
			t.Errorf("context %q: %v, want ErrDecrypt", wrong, err)
		}
	}
	if _, err := r.decrypt(blob, `{"tenant":1}`); !errors.Is(err, kms.ErrInvalidContext) {
		t.Fatalf("invalid context: %v", err)
	}
	// Tampering with the sealed part.
	if _, err := r.decrypt(reencode(blob, func(b []byte) { b[len(b)-1] ^= 1 }), ec); !errors.Is(err, kms.ErrDecrypt) {
		t.Fatalf("tampered tag: %v", err)
	}
	if _, err := r.decrypt(reencode(blob, func(b []byte) { b[25] ^= 1 }), ec); !errors.Is(err, kms.ErrDecrypt) {
		t.Fatalf("tampered IV: %v", err)
	}
}

func TestIntegrationRelabel(t *testing.T) {
	r := newRig(t, kms.Config{})
	a := r.create("a")
	b := r.create("b")
	blob := r.encrypt(a.KeyID, []byte("secret"), "")

	// Key id bytes replaced by another existing key's id: the header is in
	// the AAD and the object differs, so it does not authenticate.
	bid := uuid.MustParse(b.KeyID)
	relabelled := reencode(blob, func(raw []byte) { copy(raw[1:17], bid[:]) })
	if _, err := r.decrypt(relabelled, ""); !errors.Is(err, kms.ErrDecrypt) {
		t.Fatalf("key relabel: %v, want ErrDecrypt", err)
	}
	// A key that does not exist.
	unknown := uuid.New()
	if _, err := r.decrypt(reencode(blob, func(raw []byte) { copy(raw[1:17], unknown[:]) }), ""); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Fatalf("unknown key: %v, want ErrKeyNotFound", err)
	}
	// Version changed: the key has no such version.
	for _, v := range []uint32{2, 0xffffffff} {
		changed := reencode(blob, func(raw []byte) { binary.BigEndian.PutUint32(raw[17:21], v) })
		if _, err := r.decrypt(changed, ""); !errors.Is(err, kms.ErrInvalidCiphertext) {
			t.Fatalf("version %d: %v, want ErrInvalidCiphertext", v, err)
		}
	}
	// Version 0 and unknown format versions are refused by the parser.
	if _, err := r.decrypt(reencode(blob, func(raw []byte) { binary.BigEndian.PutUint32(raw[17:21], 0) }), ""); !errors.Is(err, kms.ErrInvalidCiphertext) {
		t.Fatalf("version 0: %v", err)
	}
	if _, err := r.decrypt(reencode(blob, func(raw []byte) { raw[0] = 2 }), ""); !errors.Is(err, kms.ErrInvalidCiphertext) {
		t.Fatalf("format 2: %v", err)
	}
	// The original still decrypts.
	if got, err := r.decrypt(blob, ""); err != nil || string(got) != "secret" {
		t.Fatalf("original: %v", err)
	}
}

func TestIntegrationRestart(t *testing.T) {
	r := newRig(t, kms.Config{})
	var keys []kms.KeyMetadata
	var blobs []string
	for i := range 3 {
		k := r.create(fmt.Sprintf("key-%d", i))
		keys = append(keys, k)
		blobs = append(blobs, r.encrypt(k.KeyID, []byte(fmt.Sprintf("plaintext %d", i)), `{"i":"`+fmt.Sprint(i)+`"}`))
	}

	r.restart()

	for i, k := range keys {
		got, err := r.svc.DescribeKey(adminCtx(), k.KeyID)
		if err != nil {
			t.Fatalf("DescribeKey after restart: %v", err)
		}
		if got.KeyID != k.KeyID || got.Alias != k.Alias || got.Description != k.Description ||
			got.KeyState != k.KeyState || got.KeyUsage != k.KeyUsage || got.CurrentVersion != 1 ||
			!got.CreateTime.Equal(k.CreateTime) {
			t.Fatalf("metadata changed across restart:\n%+v\n%+v", k, got)
		}
		pt, err := r.decrypt(blobs[i], `{"i":"`+fmt.Sprint(i)+`"}`)
		if err != nil || string(pt) != fmt.Sprintf("plaintext %d", i) {
			t.Fatalf("old ciphertext %d after restart: %v", i, err)
		}
		// And new encryptions work.
		b := r.encrypt(k.KeyID, []byte("new"), "")
		if pt, err := r.decrypt(b, ""); err != nil || string(pt) != "new" {
			t.Fatal(err)
		}
	}
	// Aliases are still taken.
	if _, err := r.svc.CreateKey(adminCtx(), kms.CreateKeyInput{Alias: "key-0"}); !errors.Is(err, kms.ErrAliasExists) {
		t.Fatalf("alias after restart: %v", err)
	}
	listed, _ := r.svc.ListKeys(adminCtx(), kms.ListKeysInput{})
	list := listed.Keys
	if len(list) != 3 {
		t.Fatalf("ListKeys: %d", len(list))
	}
}

// TestIntegrationCrashAfterGenerate simulates a crash between
// hsm.GenerateKey and store.CreateKey: the intent and the object exist, the
// key does not. The next start must destroy the object and drop the intent.
func TestIntegrationCrashAfterGenerate(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	kept := r.create("kept")
	keptBlob := r.encrypt(kept.KeyID, []byte("kept"), "")
	r.svc = nil // "crash": the service goes away mid-creation

	objectID := make([]byte, 16)
	rand.Read(objectID)
	keyID := uuid.NewString()
	if err := r.st.AddPendingObject(ctx, sealIntent(t, r.h, store.PendingObject{ObjectID: objectID, KeyID: keyID, Version: 1, CreatedAt: time.Now()})); err != nil {
		t.Fatal(err)
	}
	if err := r.h.GenerateKey(ctx, objectID, keyID+"/v1"); err != nil {
		t.Fatal(err)
	}
	// A crash right after the intent, before GenerateKey.
	never := make([]byte, 16)
	rand.Read(never)
	if err := r.st.AddPendingObject(ctx, sealIntent(t, r.h, store.PendingObject{ObjectID: never, KeyID: uuid.NewString(), Version: 1, CreatedAt: time.Now()})); err != nil {
		t.Fatal(err)
	}
	if !r.tokenHas(objectID) {
		t.Fatal("setup: object not on token")
	}

	// Restart: close everything, reopen, New runs Recover.
	r.restart()

	if r.tokenHas(objectID) {
		t.Fatal("uncommitted object survived recovery")
	}
	pending, err := r.st.PendingObjects(ctx)
	if err != nil || len(pending) != 0 {
		t.Fatalf("intents left: %+v %v", pending, err)
	}
	if _, err := r.svc.DescribeKey(ctx, keyID); !errors.Is(err, kms.ErrKeyNotFound) {
		t.Fatalf("crashed key reported: %v", err)
	}
	if list, _ := r.svc.ListKeys(ctx, kms.ListKeysInput{}); len(list.Keys) != 1 || list.Keys[0].KeyID != kept.KeyID {
		t.Fatalf("keys %+v", list)
	}
	if !r.tokenHas(r.objectOf(kept.KeyID)) {
		t.Fatal("committed key's object destroyed")
	}
	if pt, err := r.decrypt(keptBlob, ""); err != nil || string(pt) != "kept" {
		t.Fatalf("committed key broken: %v", err)
	}

	// Recover is idempotent.
	rep, err := r.svc.Recover(ctx)
	if err != nil || rep.Committed != 0 || len(rep.RolledBack) != 0 || len(rep.Orphans) != 0 || len(rep.Missing) != 0 {
		t.Fatalf("second Recover: %+v %v", rep, err)
	}
}

// TestIntegrationRecoverReport: an intent whose key is committed is dropped
// without touching the key; orphans are reported and kept; a version whose
// object vanished is reported.
func TestIntegrationRecoverReport(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	k := r.create("k")
	obj := r.objectOf(k.KeyID)

	// Intent re-added for a committed object: Recover drops only the intent.
	if err := r.st.AddPendingObject(ctx, sealIntent(t, r.h, store.PendingObject{ObjectID: obj, KeyID: k.KeyID, Version: 1, CreatedAt: time.Now()})); err != nil {
		t.Fatal(err)
	}
	// An orphan: a token object of ours with no metadata.
	orphan := make([]byte, 16)
	rand.Read(orphan)
	if err := r.h.GenerateKey(ctx, orphan, "orphan/v1"); err != nil {
		t.Fatal(err)
	}

	rep, err := r.svc.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Committed != 1 || len(rep.RolledBack) != 0 || len(rep.Orphans) != 1 || !bytes.Equal(rep.Orphans[0], orphan) || len(rep.Missing) != 0 {
		t.Fatalf("report %+v", rep)
	}
	if !r.tokenHas(obj) || !r.tokenHas(orphan) {
		t.Fatal("Recover destroyed a committed object or an orphan")
	}
	if !strings.Contains(r.logs.String(), fmt.Sprintf("%x", orphan)) {
		t.Fatal("orphan id not logged")
	}

	// A version whose object vanished from the token is reported.
	if err := r.h.DestroyKey(ctx, obj); err != nil {
		t.Fatal(err)
	}
	rep, err = r.svc.Recover(ctx)
	if err != nil || len(rep.Missing) != 1 || rep.Missing[0].KeyID != k.KeyID {
		t.Fatalf("missing object: %+v %v", rep, err)
	}
	// Encrypt now fails as an internal error, not as "key not found".
	_, err = r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: k.KeyID, Plaintext: []byte("x")})
	if !errors.Is(err, kms.ErrInternal) || errors.Is(err, kms.ErrKeyNotFound) || errors.Is(err, hsm.ErrKeyNotFound) {
		t.Fatalf("Encrypt with a missing object: %v", err)
	}
}

func TestIntegrationAliasAndLimit(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{KeyLimit: 2})
	r.create("alpha")
	if _, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "alpha"}); !errors.Is(err, kms.ErrAliasExists) {
		t.Fatalf("duplicate alias: %v", err)
	}
	r.create("Alpha") // case-sensitive
	if _, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "gamma"}); !errors.Is(err, kms.ErrLimitExceeded) {
		t.Fatalf("limit: %v", err)
	}
	ids, err := r.h.KeyIDs(ctx)
	if err != nil || len(ids) != 2+2 { // two CMKs, the credentials key and the metadata MAC key
		t.Fatalf("token objects %d %v", len(ids), err)
	}
	pending, _ := r.st.PendingObjects(ctx)
	if len(pending) != 0 {
		t.Fatal("intents left")
	}
	// The limit holds across a restart.
	r.restart()
	if _, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: "gamma"}); !errors.Is(err, kms.ErrLimitExceeded) {
		t.Fatalf("limit after restart: %v", err)
	}
	// Input validation happens before the HSM.
	for _, in := range []kms.CreateKeyInput{{Alias: "kms-x"}, {Alias: ""}, {Alias: "a", KeyUsage: "SIGN_VERIFY"}} {
		if _, err := r.svc.CreateKey(ctx, in); err == nil {
			t.Fatalf("%+v accepted", in)
		}
	}
}

func TestIntegrationConcurrent(t *testing.T) {
	ctx := adminCtx()
	r := newRig(t, kms.Config{})
	k := r.create("k")
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 20 {
				pt := []byte(fmt.Sprintf("%d/%d", i, j))
				res, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: k.KeyID, Plaintext: pt})
				if errors.Is(err, kms.ErrBusy) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				d, err := r.svc.Decrypt(ctx, kms.DecryptInput{CiphertextBlob: res.CiphertextBlob()})
				if errors.Is(err, kms.ErrBusy) {
					continue
				}
				if err != nil || !bytes.Equal(d.Plaintext, pt) {
					errs <- fmt.Errorf("decrypt: %v", err)
					return
				}
			}
		}()
	}
	for i := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := r.svc.CreateKey(ctx, kms.CreateKeyInput{Alias: fmt.Sprintf("c%d", i)}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// adminCtx carries a principal allowed everything, as the HTTP edge would
// after authenticating an administrator.
func adminCtx() context.Context {
	return kms.WithPrincipal(context.Background(), &kms.Principal{SecretID: "AKIDtestadmin", Name: "test", Policy: kms.AdminPolicy()})
}

// Working copies of a key (session objects hsm/p11 makes per session) are
// dropped when the key is disabled (which scheduling its deletion needs
// first), and the
// previous version's when it is rotated; other keys' copies stay.
func TestIntegrationWorkingCopiesDropped(t *testing.T) {
	r := newRig(t, kms.Config{})
	ctx := adminCtx()
	copies := func() int { return r.h.Stats().WorkingCopies }
	a, b := r.create("copies-a"), r.create("copies-b")
	r.encrypt(b.KeyID, []byte("b"), "")
	if n := copies(); n != 1 {
		t.Fatalf("%d copies after one Encrypt, want 1", n)
	}
	useA := func() {
		t.Helper()
		for range 4 {
			if _, err := r.svc.Encrypt(ctx, kms.EncryptInput{KeyID: a.KeyID, Plaintext: []byte("a")}); err != nil {
				t.Fatal(err)
			}
		}
		if n := copies(); n < 2 {
			t.Fatalf("%d copies after using both keys, want >= 2", n)
		}
	}
	useA()
	if err := r.svc.DisableKey(ctx, a.KeyID); err != nil {
		t.Fatal(err)
	}
	if n := copies(); n != 1 {
		t.Fatalf("%d copies after DisableKey, want 1 (the other key's)", n)
	}
	if err := r.svc.EnableKey(ctx, a.KeyID); err != nil {
		t.Fatal(err)
	}
	useA()
	old := r.encrypt(a.KeyID, []byte("v1"), "")
	if _, err := r.svc.RotateKey(ctx, a.KeyID); err != nil {
		t.Fatal(err)
	}
	if n := copies(); n != 1 {
		t.Fatalf("%d copies after RotateKey, want 1 (version 1's dropped)", n)
	}
	useA() // version 2
	before := copies()
	if pt, err := r.decrypt(old, ""); err != nil || string(pt) != "v1" {
		t.Fatalf("Decrypt of a version-1 blob: %q %v", pt, err)
	}
	if n := copies(); n != before+1 {
		t.Fatalf("%d copies after decrypting under version 1, want %d (a fresh copy)", n, before+1)
	}
	if err := r.svc.DisableKey(ctx, a.KeyID); err != nil {
		t.Fatal(err)
	}
	if n := copies(); n != 1 {
		t.Fatalf("%d copies after DisableKey of a rotated key, want 1", n)
	}
}

// sealIntent returns p sealed as the service would have written it.
func sealIntent(t *testing.T, h kms.HSM, p store.PendingObject) store.PendingObject {
	t.Helper()
	p, err := kms.SealIntentForTest(context.Background(), h, p)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
