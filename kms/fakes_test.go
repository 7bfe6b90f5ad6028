package kms

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"

	"hsmkms/hsm"
	"hsmkms/store"
)

// fakeHSM is an in-memory kms.HSM: real AES-256-GCM keyed per object id,
// returning the sentinels of package hsm. Failure injection hooks are
// consulted before each operation when set.
type fakeHSM struct {
	mu      sync.Mutex
	objects map[string]cipher.AEAD
	labels  map[string]string
	macKeys map[string][]byte // HMAC-SHA-256 keys (EnsureMACKey)

	// Hooks; nil means succeed. genAfter runs after the object is created
	// (to simulate a failure reported after the token acted).
	genErr, genAfter, sealErr, openErr, destroyErr, listErr func() error
}

func newFakeHSM() *fakeHSM {
	return &fakeHSM{objects: map[string]cipher.AEAD{}, labels: map[string]string{}, macKeys: map[string][]byte{}}
}

func (f *fakeHSM) EnsureMACKey(ctx context.Context, objectID []byte, label string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.macKeys[string(objectID)]; ok {
		return false, nil
	}
	if _, dup := f.objects[string(objectID)]; dup {
		return false, fmt.Errorf("%w: object id %x is an AES key", hsm.ErrInvalidInput, objectID)
	}
	key := make([]byte, 32)
	rand.Read(key)
	f.macKeys[string(objectID)] = key
	return true, nil
}

func (f *fakeHSM) MAC(ctx context.Context, objectID, msg []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key, ok := f.macKeys[string(objectID)]
	if !ok {
		return nil, fmt.Errorf("%w: %x", hsm.ErrKeyNotFound, objectID)
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil), nil
}

func (f *fakeHSM) VerifyMAC(ctx context.Context, objectID, msg, mac []byte) error {
	want, err := f.MAC(ctx, objectID, msg)
	if err != nil {
		return err
	}
	if !hmac.Equal(want, mac) {
		return hsm.ErrNotAuthentic
	}
	return nil
}

func call(f func() error) error {
	if f == nil {
		return nil
	}
	return f()
}

func (f *fakeHSM) GenerateKey(ctx context.Context, objectID []byte, label string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := call(f.genErr); err != nil {
		return err
	}
	if len(objectID) == 0 {
		return fmt.Errorf("%w: empty object id", hsm.ErrInvalidInput)
	}
	if _, dup := f.objects[string(objectID)]; dup {
		return fmt.Errorf("%w: duplicate object id", hsm.ErrInvalidInput)
	}
	key := make([]byte, hsm.KeyBytes)
	rand.Read(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return err
	}
	f.objects[string(objectID)] = aead
	f.labels[string(objectID)] = label
	return call(f.genAfter)
}

func (f *fakeHSM) aead(objectID []byte) (cipher.AEAD, error) {
	a, ok := f.objects[string(objectID)]
	if !ok {
		return nil, fmt.Errorf("%w: %x", hsm.ErrKeyNotFound, objectID)
	}
	return a, nil
}

func (f *fakeHSM) Seal(ctx context.Context, objectID, plaintext, aad []byte) ([]byte, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := call(f.sealErr); err != nil {
		return nil, nil, err
	}
	a, err := f.aead(objectID)
	if err != nil {
		return nil, nil, err
	}
	iv := make([]byte, hsm.IVBytes)
	rand.Read(iv)
	return iv, a.Seal(nil, iv, plaintext, aad), nil
}

func (f *fakeHSM) Open(ctx context.Context, objectID, iv, sealed, aad []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := call(f.openErr); err != nil {
		return nil, err
	}
	if len(iv) != hsm.IVBytes || len(sealed) < hsm.TagBytes {
		return nil, hsm.ErrInvalidInput
	}
	a, err := f.aead(objectID)
	if err != nil {
		return nil, err
	}
	pt, err := a.Open(nil, iv, sealed, aad)
	if err != nil {
		return nil, hsm.ErrNotAuthentic
	}
	return pt, nil
}

func (f *fakeHSM) DestroyKey(ctx context.Context, objectID []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := call(f.destroyErr); err != nil {
		return err
	}
	if _, err := f.aead(objectID); err != nil {
		return err
	}
	delete(f.objects, string(objectID))
	delete(f.labels, string(objectID))
	return nil
}

func (f *fakeHSM) KeyIDs(ctx context.Context) ([][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := call(f.listErr); err != nil {
		return nil, err
	}
	var out [][]byte
	for id := range f.objects {
		out = append(out, []byte(id))
	}
	for id := range f.macKeys {
		out = append(out, []byte(id))
	}
	sort.Slice(out, func(i, j int) bool { return string(out[i]) < string(out[j]) })
	return out, nil
}

func (f *fakeHSM) Random(ctx context.Context, n int) ([]byte, error) {
	b := make([]byte, n)
	rand.Read(b)
	return b, nil
}

func (f *fakeHSM) has(objectID []byte) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.objects[string(objectID)]
	return ok
}

// count returns the number of CMK objects: every object but the
// credentials key, which New makes once per token.
func (f *fakeHSM) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := len(f.objects)
	if _, ok := f.objects[string(credKEKObjectID)]; ok {
		n--
	}
	return n
}

// fakeStore is an in-memory kms.Store with failure injection.
type fakeStore struct {
	mu      sync.Mutex
	keys    map[string]store.Key
	pending map[string]store.PendingObject

	addPendingErr, getErr, listErr func() error
	// createErr fails CreateKey; if createCommits, the key is committed
	// first and the error returned anyway.
	createErr     func() error
	createCommits bool

	updateErr, reserveErr func() error
	reserveCalls          int

	creds map[string]store.Credential

	// sealer, when set, seals what the test helpers put, setState and
	// addIntent write, as the service would have (the tests simulate
	// crashes and earlier states, not tampering).
	sealer *fakeHSM
}

// sealLocked re-seals k at the next generation if a sealer is set and has
// the MAC key.
func (s *fakeStore) sealLocked(k *store.Key) {
	if s.sealer == nil {
		return
	}
	ctx := context.Background()
	for i := range k.Versions {
		m, err := s.sealer.MAC(ctx, macKeyObjectID, versionMsg(k.ID, k.Versions[i]))
		if err != nil {
			return
		}
		k.Versions[i].MAC = m
	}
	k.Gen++
	k.MAC, _ = s.sealer.MAC(ctx, macKeyObjectID, keyMsg(*k))
}

// addIntent records a sealed intent, as the service would.
func (s *fakeStore) addIntent(p store.PendingObject) {
	if s.sealer != nil {
		p.MAC, _ = s.sealer.MAC(context.Background(), macKeyObjectID, intentMsg(p))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p.ObjectID = slices.Clone(p.ObjectID)
	s.pending[string(p.ObjectID)] = p
}

func newFakeStore() *fakeStore {
	return &fakeStore{keys: map[string]store.Key{}, pending: map[string]store.PendingObject{}, creds: map[string]store.Credential{}}
}

func (s *fakeStore) CreateCredential(ctx context.Context, c store.Credential) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.creds[c.SecretID]; ok {
		return store.ErrCredentialExists
	}
	s.creds[c.SecretID] = c
	return nil
}

func (s *fakeStore) ListCredentials(ctx context.Context) ([]store.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []store.Credential{}
	for _, c := range s.creds {
		out = append(out, c)
	}
	return out, nil
}

func (s *fakeStore) UpdateCredential(ctx context.Context, n store.Credential) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.creds[n.SecretID]
	if !ok {
		return store.ErrNotFound
	}
	if c.Gen >= n.Gen {
		return store.ErrStale
	}
	c.Name, c.Policy, c.Enabled, c.Gen, c.MAC = n.Name, n.Policy, n.Enabled, n.Gen, n.MAC
	s.creds[n.SecretID] = c
	return nil
}

func (s *fakeStore) SetVersionMAC(ctx context.Context, keyID string, number uint32, mac []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[keyID]
	if !ok {
		return store.ErrNotFound
	}
	k = cloneKey(k)
	for i := range k.Versions {
		if k.Versions[i].Number == number {
			k.Versions[i].MAC = mac
			s.keys[keyID] = k
			return nil
		}
	}
	return store.ErrNotFound
}

func (s *fakeStore) SetPendingMAC(ctx context.Context, objectID, mac []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p, ok := s.pending[string(objectID)]
	if !ok {
		return store.ErrNotFound
	}
	p.MAC = mac
	s.pending[string(objectID)] = p
	return nil
}

func (s *fakeStore) DeleteCredential(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.creds[id]; !ok {
		return store.ErrNotFound
	}
	delete(s.creds, id)
	return nil
}

func (s *fakeStore) updateCred(id string, f func(*store.Credential)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.creds[id]
	if !ok {
		return store.ErrNotFound
	}
	f(&c)
	s.creds[id] = c
	return nil
}

// adminCtx carries a principal allowed everything, as the HTTP edge would
// after authenticating an administrator.
var adminCtx = WithPrincipal(context.Background(), &Principal{SecretID: "AKIDtestadmin", Name: "test", Policy: AdminPolicy()})

func cloneKey(k store.Key) store.Key {
	k.Tags = slices.Clone(k.Tags)
	k.Versions = slices.Clone(k.Versions)
	for i := range k.Versions {
		k.Versions[i].ObjectID = slices.Clone(k.Versions[i].ObjectID)
	}
	return k
}

func (s *fakeStore) AddPendingObject(ctx context.Context, p store.PendingObject) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := call(s.addPendingErr); err != nil {
		return err
	}
	p.ObjectID = slices.Clone(p.ObjectID)
	s.pending[string(p.ObjectID)] = p
	return nil
}

func (s *fakeStore) PendingObjects(ctx context.Context) ([]store.PendingObject, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.PendingObject
	for _, p := range s.pending {
		out = append(out, p)
	}
	return out, nil
}

func (s *fakeStore) DeletePendingObject(ctx context.Context, objectID []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.pending, string(objectID))
	return nil
}

func (s *fakeStore) CreateKey(ctx context.Context, k store.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := call(s.createErr)
	if err != nil && !s.createCommits {
		return err
	}
	for _, o := range s.keys {
		if o.Alias == k.Alias && o.State != StateDeleted && k.State != StateDeleted {
			return store.ErrAliasExists
		}
	}
	s.keys[k.ID] = cloneKey(k)
	for _, v := range k.Versions {
		delete(s.pending, string(v.ObjectID))
	}
	return err
}

func (s *fakeStore) GetKey(ctx context.Context, id string) (store.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := call(s.getErr); err != nil {
		return store.Key{}, err
	}
	k, ok := s.keys[id]
	if !ok {
		return store.Key{}, store.ErrNotFound
	}
	return cloneKey(k), nil
}

func (s *fakeStore) ListKeys(ctx context.Context) ([]store.Key, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := call(s.listErr); err != nil {
		return nil, err
	}
	var out []store.Key
	for _, k := range s.keys {
		out = append(out, cloneKey(k))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (s *fakeStore) CountKeys(ctx context.Context) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys), nil
}

func (s *fakeStore) ObjectIDs(ctx context.Context) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][]byte
	for _, k := range s.keys {
		for _, v := range k.Versions {
			out = append(out, slices.Clone(v.ObjectID))
		}
	}
	return out, nil
}

func (s *fakeStore) pendingCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.pending)
}

func (s *fakeStore) setState(id, state string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := cloneKey(s.keys[id])
	k.State = state
	s.sealLocked(&k)
	s.keys[id] = k
}

func (s *fakeStore) put(k store.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k = cloneKey(k)
	s.sealLocked(&k)
	s.keys[k.ID] = k
}

var (
	_ HSM   = (*fakeHSM)(nil)
	_ Store = (*fakeStore)(nil)
)

func (s *fakeStore) UpdateKey(ctx context.Context, k store.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updateKeyLocked(k)
}

// failUpdate makes the n-th key write from now on fail, and only it
// (updateErr is called with s.mu held).
func (s *fakeStore) failUpdate(n int) {
	var writes int
	s.updateErr = func() error {
		writes++
		if writes == n {
			return errors.New("disk full")
		}
		return nil
	}
}

// UpdateKeys applies ks in order, all or none.
func (s *fakeStore) UpdateKeys(ctx context.Context, ks ...store.Key) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	saved := maps.Clone(s.keys)
	for _, k := range ks {
		if err := s.updateKeyLocked(k); err != nil {
			s.keys = saved
			return err
		}
	}
	return nil
}

func (s *fakeStore) updateKeyLocked(k store.Key) error {
	if err := call(s.updateErr); err != nil {
		return err
	}
	old, ok := s.keys[k.ID]
	if !ok {
		return store.ErrNotFound
	}
	if k.Alias != "" && k.State != StateDeleted {
		for id, o := range s.keys {
			if id != k.ID && o.Alias == k.Alias && o.State != StateDeleted {
				return store.ErrAliasExists
			}
		}
	}
	old.Alias, old.Description, old.State, old.DeletionDate = k.Alias, k.Description, k.State, k.DeletionDate
	old.RotationEnabled, old.RotateDays, old.LastRotatedAt = k.RotationEnabled, k.RotateDays, k.LastRotatedAt
	old.Tags = slices.Clone(k.Tags)
	if old.Gen >= k.Gen {
		return store.ErrStale
	}
	old.Gen, old.MAC = k.Gen, k.MAC
	s.keys[k.ID] = old
	return nil
}

func (s *fakeStore) AddVersion(ctx context.Context, nk store.Key, v store.Version) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	keyID := nk.ID
	k, ok := s.keys[keyID]
	if !ok {
		return store.ErrNotFound
	}
	if k.Gen >= nk.Gen {
		return store.ErrStale
	}
	k.Gen, k.MAC = nk.Gen, nk.MAC
	if v.Number != k.Versions[len(k.Versions)-1].Number+1 {
		return fmt.Errorf("version %d out of order", v.Number)
	}
	v.ObjectID = slices.Clone(v.ObjectID)
	k.Versions = append(slices.Clone(k.Versions), v)
	k.LastRotatedAt = v.CreatedAt
	s.keys[keyID] = k
	delete(s.pending, string(v.ObjectID))
	return nil
}

func (s *fakeStore) ReserveUsage(ctx context.Context, keyID string, version uint32, upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := call(s.reserveErr); err != nil {
		return err
	}
	s.reserveCalls++
	k, ok := s.keys[keyID]
	if !ok {
		return store.ErrNotFound
	}
	for i := range k.Versions {
		if k.Versions[i].Number == version {
			k.Versions[i].UsageReserved = max(k.Versions[i].UsageReserved, upTo)
			return nil
		}
	}
	return store.ErrNotFound
}
