package kms

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"hsmkms/hsm"
	"hsmkms/store"
)

// Authenticated metadata.
//
// Everything that decides who may use a key lives outside the HSM, in the
// store. So that write access to the store is not administrator access,
// every security-relevant row carries a MAC computed inside the HSM
// (HMAC-SHA-256, hsm.MACer) under a dedicated generic-secret key that is
// made once per token, with the credentials key, and never leaves it:
//
//   - keys: id, alias, description, usage, state, origin, creation and
//     deletion dates, rotation settings, last rotation, the number and the
//     highest number of their versions, the row's generation, and the
//     public key of an asymmetric key;
//     key's tags (tags.go, kept in their own table);
//   - key versions: key id, number, token object id and creation date (not
//     the usage reservation, a high-water mark every node raises);
//   - credentials: SecretId, name, policy, enabled flag, creation date, the
//     sealed SecretKey and its KEK's object id, and the generation;
//   - intents (pending objects): object id, key id, version, creation date.
//
// The MAC is over a canonical, versioned encoding (macMsg) that starts with
// the kind of row and includes its primary key, so a row copied onto
// another key, or a version onto another key, does not verify.
//
// The Service verifies rows when it loads them, on every refresh from a
// shared store and right before a destructive job (purge, rollback of an
// intent), never per request. A row that fails is not obeyed: its key is
// served as Disabled without an alias (every change refused), its
// credential as disabled, its intent is left alone; the failure is logged
// at Error level, counted, listed by IntegrityFailures and passed to
// Config.OnIntegrityFailure (kmsd records it in the audit trail). Only an
// administrator's Reseal* call makes such a row count again.
//
// Keys and credentials carry a generation raised by every change; the
// store refuses to write one that is not higher than the stored one
// (store.ErrStale), and the Service refuses a row whose generation is
// lower than the highest it verified since it started, so a row cannot be
// rolled back while the Service runs. Restoring an old but validly sealed
// row while no node runs is not detected.
//
// Upgrade: rows written before MACs existed have none. They are sealed
// once, at the start that creates the MAC key on the token (the HSM then
// says this is the first start with MACs, which the store alone could not
// prove); later, a row without a MAC is a failure like any other.

// ErrIntegrity means a stored row failed its integrity check (MAC,
// generation) and is not obeyed until an administrator reseals it.
var ErrIntegrity = errors.New("kms: stored metadata failed its integrity check; not obeyed until an administrator checks and reseals it")

// macKeyObjectID is the CKA_ID of the metadata MAC key; made once, with
// the credentials key, the first time kmsd starts on a token.
var macKeyObjectID = []byte("hsmkms/metadata-mac/v1")

const macKeyLabel = "metadata-mac/v1"

// macVersion prefixes every MAC message; a new encoding gets a new one.
const macVersion = "hsmkms metadata MAC v1\x00"

// Kinds of authenticated rows, as IntegrityFailure.Kind reports them.
const (
	KindKey        = "key"
	KindVersion    = "key-version"
	KindCredential = "credential"
	KindIntent     = "intent"
)

// IntegrityFailure is a stored row that failed its integrity check.
type IntegrityFailure struct {
	Kind   string // KindKey, KindCredential or KindIntent (a bad version fails its key)
	ID     string // key id, SecretId, or hex object id of an intent
	Reason string // what failed, without secrets
	Since  time.Time
}

// integrity is the Service's record of failing rows; safe for concurrent use.
type integrity struct {
	mu       sync.Mutex
	failing  map[string]IntegrityFailure // by Kind + "/" + ID
	detected uint64                      // failures detected since start (a row failing again after a reseal counts again)
	hook     func(IntegrityFailure)
}

// IntegrityFailures lists the rows failing their integrity check now,
// sorted by kind and id. Safe for concurrent use.
func (s *Service) IntegrityFailures() []IntegrityFailure {
	s.integ.mu.Lock()
	defer s.integ.mu.Unlock()
	out := make([]IntegrityFailure, 0, len(s.integ.failing))
	for _, f := range s.integ.failing {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind < out[j].Kind
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// IntegrityFailuresDetected counts the integrity failures detected since
// the Service started. Safe for concurrent use.
func (s *Service) IntegrityFailuresDetected() uint64 {
	s.integ.mu.Lock()
	defer s.integ.mu.Unlock()
	return s.integ.detected
}

// reportIntegrity records a failing row; a row already failing is not
// reported again (refreshes re-read it every resync interval).
func (s *Service) reportIntegrity(kind, id string, cause error) {
	f := IntegrityFailure{Kind: kind, ID: id, Reason: cause.Error(), Since: s.now().UTC()}
	s.integ.mu.Lock()
	if old, ok := s.integ.failing[kind+"/"+id]; ok && old.Reason == f.Reason {
		s.integ.mu.Unlock()
		return
	}
	s.integ.failing[kind+"/"+id] = f
	s.integ.detected++
	hook := s.integ.hook
	s.integ.mu.Unlock()
	s.log.Error("kms: INTEGRITY CHECK FAILED: stored metadata was changed outside kmsd; the row is not obeyed (treated as disabled) until an administrator checks it and runs `kmsd reseal`",
		"kind", kind, "id", id, "reason", f.Reason)
	if hook != nil {
		hook(f)
	}
}

// clearIntegrity forgets a failure once the row verifies again.
func (s *Service) clearIntegrity(kind, id string) {
	s.integ.mu.Lock()
	delete(s.integ.failing, kind+"/"+id)
	s.integ.mu.Unlock()
}

// ---------------------------------------------------------------------------
// Canonical encoding

// macMsg builds the canonical encoding of a row: macVersion, the kind, then
// each field as a tagged, length-prefixed value, so no two different rows
// encode alike.
type macMsg struct{ b []byte }

func newMACMsg(kind string) *macMsg {
	m := &macMsg{b: make([]byte, 0, 256)}
	m.b = append(m.b, macVersion...)
	m.str(kind)
	return m
}

func (m *macMsg) str(s string) *macMsg {
	m.b = append(m.b, 's')
	m.b = binary.BigEndian.AppendUint32(m.b, uint32(len(s)))
	m.b = append(m.b, s...)
	return m
}

func (m *macMsg) bytes(p []byte) *macMsg {
	m.b = append(m.b, 'b')
	m.b = binary.BigEndian.AppendUint32(m.b, uint32(len(p)))
	m.b = append(m.b, p...)
	return m
}

func (m *macMsg) u64(v uint64) *macMsg {
	m.b = append(m.b, 'u')
	m.b = binary.BigEndian.AppendUint64(m.b, v)
	return m
}

func (m *macMsg) flag(v bool) *macMsg {
	if v {
		m.b = append(m.b, 't')
	} else {
		m.b = append(m.b, 'f')
	}
	return m
}

// time encodes nanoseconds since the epoch, the stores' precision; the
// zero time ("none") encodes apart from any instant.
func (m *macMsg) time(t time.Time) *macMsg {
	if t.IsZero() {
		m.b = append(m.b, 'z')
		return m
	}
	m.b = append(m.b, 'T')
	m.b = binary.BigEndian.AppendUint64(m.b, uint64(t.UnixNano()))
	return m
}

func keyMsg(r store.Key) []byte {
	var top uint32
	if n := len(r.Versions); n > 0 {
		top = r.Versions[n-1].Number
	}
	m := newMACMsg(KindKey).str(r.ID).str(r.Alias).str(r.Description).str(r.Usage).str(r.State).str(r.Origin).
		time(r.CreatedAt).time(r.DeletionDate).flag(r.RotationEnabled).u64(uint64(r.RotateDays)).time(r.LastRotatedAt).
		u64(uint64(len(r.Versions))).u64(uint64(top)).u64(r.Gen)
	// Optional fields are appended, named, only when set, so the rows
	// sealed before they existed keep their MACs.
	if len(r.PublicKey) > 0 {
		m.str("public_key").bytes(r.PublicKey)
	}
	materialMsgSuffix(m, r)
	tagsMsg(m, r.Tags)
	return m.b
}

// tagsMsg appends a key's tags (tags.go) to its MAC message: nothing for a
// key without tags, so rows sealed before tags existed verify unchanged;
// else a marker, the count and each key and value, in the stored order
// (sorted by key).
func tagsMsg(m *macMsg, tags []store.Tag) {
	if len(tags) == 0 {
		return
	}
	m.str("tags").u64(uint64(len(tags)))
	for _, t := range tags {
		m.str(t.Key).str(t.Value)
	}
}

func versionMsg(keyID string, v store.Version) []byte {
	return newMACMsg(KindVersion).str(keyID).u64(uint64(v.Number)).bytes(v.ObjectID).time(v.CreatedAt).b
}

func credMsg(c store.Credential) []byte {
	return newMACMsg(KindCredential).str(c.SecretID).str(c.Name).str(c.Policy).flag(c.Enabled).time(c.CreatedAt).
		bytes(c.KEKObjectID).bytes(c.SealedKey).u64(c.Gen).b
}

func intentMsg(p store.PendingObject) []byte {
	return newMACMsg(KindIntent).bytes(p.ObjectID).str(p.KeyID).u64(uint64(p.Version)).time(p.CreatedAt).b
}

// ---------------------------------------------------------------------------
// Sealing and checking

// ensureMACKey makes sure the metadata MAC key exists on the token: the
// token looks it up by its fixed id and creates it only if it is absent,
// so it is never regenerated, and of nodes starting at once exactly one
// creates it. created reports that this start made it: the upgrade start.
func (s *Service) ensureMACKey(ctx context.Context) (created bool, err error) {
	created, err = s.hsm.EnsureMACKey(ctx, macKeyObjectID, macKeyLabel)
	if err != nil {
		return false, fmt.Errorf("kms: make sure the metadata MAC key is on the token: %w", err)
	}
	if created {
		s.log.Info("kms: created the metadata MAC key on the token")
	}
	return created, nil
}

func (s *Service) mac(ctx context.Context, msg []byte) ([]byte, error) {
	m, err := s.hsm.MAC(ctx, macKeyObjectID, msg)
	if err != nil {
		return nil, s.hsmErr(s.log, "compute metadata MAC", err)
	}
	return m, nil
}

// verify checks a stored MAC. A missing or wrong MAC is an error wrapping
// ErrIntegrity; an HSM failure is returned as such (the row is not judged).
func (s *Service) verify(ctx context.Context, what string, msg, mac []byte) error {
	if len(mac) == 0 {
		return fmt.Errorf("%w: %s has no MAC", ErrIntegrity, what)
	}
	err := s.hsm.VerifyMAC(ctx, macKeyObjectID, msg, mac)
	if errors.Is(err, hsm.ErrNotAuthentic) {
		return fmt.Errorf("%w: %s: MAC does not match", ErrIntegrity, what)
	}
	if err != nil {
		return s.hsmErr(s.log, "verify metadata MAC", err)
	}
	return nil
}

// sealKey sets the MAC of r and of every version of r that has none.
func (s *Service) sealKey(ctx context.Context, r *store.Key) error {
	r.Versions = append([]store.Version(nil), r.Versions...)
	for i := range r.Versions {
		if len(r.Versions[i].MAC) == 0 {
			m, err := s.mac(ctx, versionMsg(r.ID, r.Versions[i]))
			if err != nil {
				return err
			}
			r.Versions[i].MAC = m
		}
	}
	m, err := s.mac(ctx, keyMsg(*r))
	if err != nil {
		return err
	}
	r.MAC = m
	return nil
}

// checkKey verifies a stored key and its versions. floor is the highest
// generation verified for this key so far (0 if none).
func (s *Service) checkKey(ctx context.Context, r store.Key, floor uint64) error {
	if r.Gen < floor {
		return fmt.Errorf("%w: key %s went back from generation %d to %d", ErrIntegrity, r.ID, floor, r.Gen)
	}
	if err := s.verify(ctx, "key "+r.ID, keyMsg(r), r.MAC); err != nil {
		return err
	}
	for _, v := range r.Versions {
		if err := s.verify(ctx, fmt.Sprintf("key %s version %d", r.ID, v.Number), versionMsg(r.ID, v), v.MAC); err != nil {
			return err
		}
	}
	return nil
}

func (s *Service) sealCred(ctx context.Context, c *store.Credential) error {
	m, err := s.mac(ctx, credMsg(*c))
	if err != nil {
		return err
	}
	c.MAC = m
	return nil
}

func (s *Service) checkCred(ctx context.Context, c store.Credential, floor uint64) error {
	if c.Gen < floor {
		return fmt.Errorf("%w: credential %s went back from generation %d to %d", ErrIntegrity, c.SecretID, floor, c.Gen)
	}
	return s.verify(ctx, "credential "+c.SecretID, credMsg(c), c.MAC)
}

func (s *Service) sealIntent(ctx context.Context, p *store.PendingObject) error {
	m, err := s.mac(ctx, intentMsg(*p))
	if err != nil {
		return err
	}
	p.MAC = m
	return nil
}

// addIntent seals and records an intent.
func (s *Service) addIntent(ctx context.Context, p store.PendingObject) error {
	if err := s.sealIntent(ctx, &p); err != nil {
		return err
	}
	return s.store.AddPendingObject(ctx, p)
}

// writeKey writes the changed record r of the cached key k: the next
// generation, sealed. It returns the record as stored.
func (s *Service) writeKey(ctx context.Context, k *keyEntry, r store.Key) (store.Key, error) {
	if err := s.sealUpdate(ctx, k, &r); err != nil {
		return store.Key{}, err
	}
	return r, s.store.UpdateKey(ctx, r)
}

// sealUpdate makes r, a change of k's record, ready to store: the next
// generation and the MAC over it.
func (s *Service) sealUpdate(ctx context.Context, k *keyEntry, r *store.Key) error {
	r.Gen = max(k.rec.Gen, k.floor) + 1
	return s.sealKey(ctx, r)
}

// reserved reports whether objectID is one of the service's own token
// objects (credentials key, MAC key), which no key version or intent may
// name: a destructive job refuses them whatever the metadata says.
func reservedObject(objectID []byte) bool {
	return bytes.Equal(objectID, credKEKObjectID) || bytes.Equal(objectID, macKeyObjectID)
}

// quarantine turns the entry made from a failing record into one that is
// never obeyed: Disabled (so nothing encrypts or decrypts with it and no
// job touches it), without an alias (so it cannot take another key's), and
// marked so that every change is refused until a reseal.
func quarantine(k *keyEntry, cause error, floor uint64) {
	k.suspect = cause
	k.floor = floor
	k.meta.KeyState = StateDisabled
	k.meta.Alias = ""
	k.meta.KeyRotationEnabled = false
	k.meta.NextRotateTime = time.Time{}
}

// entryFor makes the cache entry of a stored key record, verified: a
// record that fails is quarantined (and reported). An HSM failure is
// returned: the record is not judged.
func (s *Service) entryFor(ctx context.Context, r store.Key, prev *keyEntry) (*keyEntry, error) {
	var floor uint64
	if prev != nil {
		floor = prev.floor
	}
	cerr := s.checkKey(ctx, r, floor)
	if cerr != nil && !errors.Is(cerr, ErrIntegrity) {
		return nil, cerr
	}
	k, err := newKeyEntry(r, prev)
	if err != nil {
		return nil, err
	}
	if cerr != nil {
		quarantine(k, cerr, floor)
		s.reportIntegrity(KindKey, r.ID, cerr)
		return k, nil
	}
	k.floor = r.Gen
	s.clearIntegrity(KindKey, r.ID)
	return k, nil
}

// checkUsable refuses changes to a quarantined key.
func checkUsable(k *keyEntry) error {
	if k.suspect != nil {
		return fmt.Errorf("%w: %s: %w", ErrKeyDisabled, k.meta.KeyID, k.suspect)
	}
	return nil
}

// credEntryChecked makes the cache entry of a stored credential, verified:
// a record that fails gives a disabled entry that never authenticates
// (and is reported). An HSM failure is returned: the record is not judged.
func (s *Service) credEntryChecked(ctx context.Context, r store.Credential, old *credEntry) (*credEntry, error) {
	if old != nil && sameCredRecord(old.rec, r) {
		return old, nil // verified (or found failing) already; a resync re-reads every row
	}
	var floor uint64
	if old != nil {
		floor = old.floor
	}
	cerr := s.checkCred(ctx, r, floor)
	if cerr != nil && !errors.Is(cerr, ErrIntegrity) {
		return nil, cerr
	}
	if cerr != nil {
		s.reportIntegrity(KindCredential, r.SecretID, cerr)
		pol, _, _ := parseStoredPolicy(r.Policy) // shown, never obeyed
		return &credEntry{
			info:    CredentialInfo{SecretID: r.SecretID, Name: r.Name, Enabled: false, CreatedAt: r.CreatedAt, Policy: pol},
			enabled: false,
			rec:     r,
			floor:   floor,
			suspect: cerr,
		}, nil
	}
	if old != nil && old.suspect != nil {
		old = nil // nothing of a suspect entry is reused
	}
	e, err := s.credEntryFor(ctx, r, old)
	if err != nil {
		return nil, err
	}
	e.rec, e.floor = r, r.Gen
	s.clearIntegrity(KindCredential, r.SecretID)
	return e, nil
}

// sameCredRecord reports whether two stored credential rows are identical.
func sameCredRecord(a, b store.Credential) bool {
	return a.SecretID == b.SecretID && a.Name == b.Name && a.Policy == b.Policy && a.Enabled == b.Enabled &&
		a.CreatedAt.Equal(b.CreatedAt) && a.Gen == b.Gen && bytes.Equal(a.MAC, b.MAC) &&
		bytes.Equal(a.SealedKey, b.SealedKey) && bytes.Equal(a.KEKObjectID, b.KEKObjectID)
}
