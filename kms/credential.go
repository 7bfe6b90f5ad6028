package kms

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	"hsmkms/hsm"
	"hsmkms/store"
)

// Credential errors.
var (
	// ErrCredentialNotFound means no enabled credential has that SecretId.
	ErrCredentialNotFound = errors.New("kms: credential not found or disabled")
	// ErrInvalidCredential means a credential's name, SecretId or SecretKey
	// is malformed.
	ErrInvalidCredential = errors.New("kms: invalid credential")
	// ErrCredentialExists means the SecretId is taken.
	ErrCredentialExists = errors.New("kms: credential already exists")
)

// Credential is an API credential as the HTTP edge needs it to verify a
// signature: the SecretKey is symmetric, so the verifier must know it.
// Callers must not modify it.
type Credential struct {
	SecretID  string
	SecretKey string
	Principal *Principal
}

// CredentialInfo describes a credential without its secret.
type CredentialInfo struct {
	SecretID  string
	Name      string
	Enabled   bool
	CreatedAt time.Time
	Policy    Policy
}

// credKEKObjectID is the CKA_ID of the token object that seals every
// SecretKey; it is made once, the first time kmsd starts on a token.
var credKEKObjectID = []byte("hsmkms/credentials-kek/v1")

const credKEKLabel = "credentials-kek/v1"

// credAAD binds a sealed SecretKey to its SecretId, so sealed keys cannot be
// swapped between credentials in the database.
func credAAD(secretID string) []byte { return []byte("hsmkms credential v1\x00" + secretID) }

var (
	secretIDPattern = regexp.MustCompile(`^[A-Za-z0-9]{16,128}$`)
	secretKeyChars  = regexp.MustCompile(`^[\x21-\x7e]{16,128}$`)
	credNamePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$`)
)

// credEntry is a cached, decrypted credential; immutable once published.
type credEntry struct {
	cred    Credential
	info    CredentialInfo
	enabled bool
	sealed  []byte           // the stored sealed SecretKey it was unsealed from
	rec     store.Credential // the stored record, as verified; info.Policy was read from rec.Policy
	floor   uint64           // highest generation verified or written since start
	suspect error            // why rec failed its integrity check; nil if it passed
}

// loadCredentials makes sure the credentials KEK exists on the token and
// decrypts every stored credential into the in-memory cache. A credential
// that cannot be unsealed is logged and left out (it cannot authenticate).
func (s *Service) loadCredentials(ctx context.Context) error {
	ids, err := s.hsm.KeyIDs(ctx)
	if err != nil {
		return fmt.Errorf("kms: list token objects: %w", err)
	}
	found := false
	for _, id := range ids {
		if bytes.Equal(id, credKEKObjectID) {
			found = true
		}
	}
	if !found {
		if err := s.hsm.GenerateKey(ctx, credKEKObjectID, credKEKLabel); err != nil {
			return fmt.Errorf("kms: create the credentials key on the token: %w", err)
		}
		s.log.Info("kms: created the credentials key on the token")
	}
	recs, err := s.store.ListCredentials(ctx)
	if err != nil {
		return fmt.Errorf("kms: load credentials: %w", err)
	}
	creds := make(map[string]*credEntry, len(recs))
	for _, r := range recs {
		e, err := s.credEntryChecked(ctx, r, nil)
		if err != nil {
			s.log.Error("kms: credential cannot be loaded; it will not authenticate", "secret_id", r.SecretID, "err", err)
			continue
		}
		creds[r.SecretID] = e
	}
	s.credMu.Lock()
	s.creds = creds
	s.credMu.Unlock()
	s.log.Info("kms: credentials loaded", "credentials", len(creds))
	return nil
}

func (s *Service) unsealCredential(ctx context.Context, r store.Credential) (*credEntry, error) {
	pol, err := s.storedPolicy(r)
	if err != nil {
		return nil, err
	}
	if len(r.SealedKey) < hsm.IVBytes+hsm.TagBytes {
		return nil, errors.New("sealed key too short")
	}
	key, err := s.hsm.Open(ctx, r.KEKObjectID, r.SealedKey[:hsm.IVBytes], r.SealedKey[hsm.IVBytes:], credAAD(r.SecretID))
	if err != nil {
		return nil, err
	}
	info := CredentialInfo{SecretID: r.SecretID, Name: r.Name, Enabled: r.Enabled, CreatedAt: r.CreatedAt, Policy: pol}
	return &credEntry{
		cred:    Credential{SecretID: r.SecretID, SecretKey: string(key), Principal: &Principal{SecretID: r.SecretID, Name: r.Name, Policy: pol}},
		info:    info,
		enabled: r.Enabled,
		sealed:  r.SealedKey,
	}, nil
}

// storedPolicy reads the policy of a stored credential (parseStoredPolicy)
// and logs, loudly, how a policy stored before the current format is read.
func (s *Service) storedPolicy(r store.Credential) (Policy, error) {
	pol, notes, err := parseStoredPolicy(r.Policy)
	if err != nil {
		return Policy{}, err
	}
	for _, n := range notes {
		s.log.Error("kms: the credential's stored policy predates the kms-admin: namespace and policy validation; it is read as follows until its policy is updated", "secret_id", r.SecretID, "note", n)
	}
	return pol, nil
}

// credEntryFor makes the cache entry of the stored credential r, reusing
// old's unsealed SecretKey when the sealed key did not change (no HSM call)
// and old's policy when the stored document did not change (not parsed, nor
// logged, again).
func (s *Service) credEntryFor(ctx context.Context, r store.Credential, old *credEntry) (*credEntry, error) {
	if old == nil || !bytes.Equal(old.sealed, r.SealedKey) {
		return s.unsealCredential(ctx, r)
	}
	pol := old.info.Policy
	if old.rec.Policy != r.Policy {
		var err error
		if pol, err = s.storedPolicy(r); err != nil {
			return nil, err
		}
	}
	return &credEntry{
		cred: Credential{SecretID: r.SecretID, SecretKey: old.cred.SecretKey,
			Principal: &Principal{SecretID: r.SecretID, Name: r.Name, Policy: pol}},
		info:    CredentialInfo{SecretID: r.SecretID, Name: r.Name, Enabled: r.Enabled, CreatedAt: r.CreatedAt, Policy: pol},
		enabled: r.Enabled,
		sealed:  r.SealedKey,
	}, nil
}

// refreshCredential re-reads one credential from the shared store into the
// cache (removing it if it was deleted).
func (s *Service) refreshCredential(ctx context.Context, secretID string) error {
	r, err := s.cluster.store.GetCredential(ctx, secretID)
	if errors.Is(err, store.ErrNotFound) {
		s.credMu.Lock()
		if _, ok := s.creds[secretID]; ok { // a lookup of an unknown SecretId changes nothing
			delete(s.creds, secretID)
			s.credGen++
		}
		s.credMu.Unlock()
		s.clearIntegrity(KindCredential, secretID)
		return nil
	}
	if err != nil {
		return err
	}
	s.credMu.RLock()
	old := s.creds[secretID]
	s.credMu.RUnlock()
	e, err := s.credEntryChecked(ctx, r, old)
	if err != nil {
		s.log.Error("kms: credential cannot be loaded; it will not authenticate", "secret_id", secretID, "err", err)
		s.credMu.Lock()
		if _, ok := s.creds[secretID]; ok {
			delete(s.creds, secretID)
			s.credGen++
		}
		s.credMu.Unlock()
		return nil
	}
	s.credMu.Lock()
	s.creds[secretID] = e
	s.credGen++ // a resync that read the store before this must not overwrite it
	s.credMu.Unlock()
	return nil
}

// LookupCredential returns the credential of an enabled SecretId from the
// in-memory cache, or an error wrapping ErrCredentialNotFound. It never
// touches the store or the HSM, except on a shared store for a SecretId
// the cache does not hold (made on another node a moment ago), which is
// read through. It is safe for concurrent use.
func (s *Service) LookupCredential(ctx context.Context, secretID string) (*Credential, error) {
	s.credMu.RLock()
	e := s.creds[secretID]
	s.credMu.RUnlock()
	if e == nil && s.cluster != nil {
		if err := s.refreshCredential(ctx, secretID); err != nil {
			return nil, storeErr("read credential", err)
		}
		s.credMu.RLock()
		e = s.creds[secretID]
		s.credMu.RUnlock()
	}
	if e == nil || !e.enabled {
		return nil, ErrCredentialNotFound
	}
	return &e.cred, nil
}

// CreateCredential makes a credential with a fresh SecretId and SecretKey
// (drawn from the HSM's random number generator) and returns the SecretKey
// once; it is stored only sealed by the HSM. Requires
// kms-admin:CreateCredential, and the caller's policy must allow everything
// policy allows (ErrExceedsCaller).
func (s *Service) CreateCredential(ctx context.Context, name string, policy Policy) (CredentialInfo, string, error) {
	if err := authorize(ctx, actCreateCredential, "*"); err != nil {
		return CredentialInfo{}, "", err
	}
	id, err := s.randomString(ctx, "AKID", 32)
	if err != nil {
		return CredentialInfo{}, "", err
	}
	key, err := s.randomString(ctx, "", 32)
	if err != nil {
		return CredentialInfo{}, "", err
	}
	info, err := s.addCredential(ctx, name, id, key, policy)
	return info, key, err
}

// ImportCredential stores a credential whose SecretId and SecretKey the
// caller chose (for example the TENCENTCLOUD_SECRET_ID/KEY of a
// development machine). Requires kms-admin:CreateCredential, and the
// caller's policy must allow everything policy allows (ErrExceedsCaller).
func (s *Service) ImportCredential(ctx context.Context, name, secretID, secretKey string, policy Policy) (CredentialInfo, error) {
	if err := authorize(ctx, actCreateCredential, "*"); err != nil {
		return CredentialInfo{}, err
	}
	if !secretIDPattern.MatchString(secretID) {
		return CredentialInfo{}, fmt.Errorf("%w: the SecretId must be 16-128 letters or digits", ErrInvalidCredential)
	}
	if !secretKeyChars.MatchString(secretKey) {
		return CredentialInfo{}, fmt.Errorf("%w: the SecretKey must be 16-128 printable ASCII characters", ErrInvalidCredential)
	}
	return s.addCredential(ctx, name, secretID, secretKey, policy)
}

func (s *Service) addCredential(ctx context.Context, name, secretID, secretKey string, policy Policy) (CredentialInfo, error) {
	if !credNamePattern.MatchString(name) {
		return CredentialInfo{}, fmt.Errorf("%w: the name must be 1-64 characters of A-Z a-z 0-9 _ . @ -, starting with a letter or digit", ErrInvalidCredential)
	}
	doc, err := s.checkGrant(ctx, policy)
	if err != nil {
		return CredentialInfo{}, err
	}
	iv, sealed, err := s.hsm.Seal(ctx, credKEKObjectID, []byte(secretKey), credAAD(secretID))
	if err != nil {
		return CredentialInfo{}, s.hsmErr(s.log, "seal credential", err)
	}
	rec := store.Credential{
		SecretID: secretID, Name: name, SealedKey: append(iv, sealed...), KEKObjectID: credKEKObjectID,
		Policy: doc, Enabled: true, CreatedAt: s.now().UTC(), Gen: 1,
	}
	if err := s.sealCred(ctx, &rec); err != nil {
		return CredentialInfo{}, err
	}
	if err := s.store.CreateCredential(ctx, rec); err != nil {
		if errors.Is(err, store.ErrCredentialExists) {
			return CredentialInfo{}, fmt.Errorf("%w: %s", ErrCredentialExists, secretID)
		}
		return CredentialInfo{}, storeErr("create credential", err)
	}
	info := CredentialInfo{SecretID: secretID, Name: name, Enabled: true, CreatedAt: rec.CreatedAt, Policy: policy}
	e := &credEntry{
		cred:    Credential{SecretID: secretID, SecretKey: secretKey, Principal: &Principal{SecretID: secretID, Name: name, Policy: policy}},
		info:    info,
		enabled: true,
		sealed:  rec.SealedKey,
		rec:     rec,
		floor:   rec.Gen,
	}
	s.credMu.Lock()
	s.creds[secretID] = e
	s.credGen++
	s.credMu.Unlock()
	s.log.Info("kms: credential created", "secret_id", secretID, "name", name)
	return info, nil
}

// ListCredentials lists every credential, without secrets, oldest first.
// Requires kms-admin:ListCredentials.
func (s *Service) ListCredentials(ctx context.Context) ([]CredentialInfo, error) {
	if err := authorize(ctx, actListCredentials, "*"); err != nil {
		return nil, err
	}
	s.credMu.RLock()
	out := make([]CredentialInfo, 0, len(s.creds))
	for _, e := range s.creds {
		out = append(out, e.info)
	}
	s.credMu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].SecretID < out[j].SecretID
	})
	return out, nil
}

// SetCredentialEnabled enables or disables a credential; a disabled
// credential stops authenticating at once. Requires
// kms-admin:EnableCredential or kms-admin:DisableCredential; the caller
// cannot change itself (ErrSelfChange) nor a credential whose policy allows
// something its own does not (ErrExceedsCaller). ErrCredentialNotFound if
// it does not exist.
func (s *Service) SetCredentialEnabled(ctx context.Context, secretID string, enabled bool) error {
	action := actDisableCredential
	if enabled {
		action = actEnableCredential
	}
	if err := authorize(ctx, action, "*"); err != nil {
		return err
	}
	return s.changeCredential(ctx, secretID, func(e credEntry, r *store.Credential) credEntry {
		r.Enabled = enabled
		e.enabled, e.info.Enabled = enabled, enabled
		return e
	})
}

// UpdateCredentialPolicy replaces a credential's policy, effective at once.
// Requires kms-admin:UpdateCredentialPolicy; the caller cannot change its
// own policy (ErrSelfChange), nor change a credential whose current policy
// allows something its own does not, nor give one a policy that does
// (ErrExceedsCaller). Errors: ErrInvalidPolicy, ErrCredentialNotFound.
func (s *Service) UpdateCredentialPolicy(ctx context.Context, secretID string, policy Policy) error {
	if err := authorize(ctx, actUpdateCredentialPolicy, "*"); err != nil {
		return err
	}
	doc, err := s.checkGrant(ctx, policy)
	if err != nil {
		return err
	}
	return s.changeCredential(ctx, secretID, func(e credEntry, r *store.Credential) credEntry {
		r.Policy = doc
		e.info.Policy = policy
		p := *e.cred.Principal
		p.Policy = policy
		e.cred.Principal = &p
		return e
	})
}

// DeleteCredential removes a credential; it stops authenticating at once.
// Requires kms-admin:DeleteCredential; the caller cannot delete itself
// (ErrSelfChange) nor a credential whose policy allows something its own
// does not (ErrExceedsCaller). ErrCredentialNotFound if it does not exist.
func (s *Service) DeleteCredential(ctx context.Context, secretID string) error {
	if err := authorize(ctx, actDeleteCredential, "*"); err != nil {
		return err
	}
	return s.manageCredential(ctx, secretID, func(*credEntry) error {
		if err := s.store.DeleteCredential(ctx, secretID); err != nil && !errors.Is(err, store.ErrNotFound) {
			return storeErr("delete credential", err)
		}
		delete(s.creds, secretID)
		s.credGen++
		s.clearIntegrity(KindCredential, secretID) // a deleted row is obeyed by nobody
		s.log.Info("kms: credential deleted", "secret_id", secretID)
		return nil
	})
}

// checkGrant validates a policy the caller wants to give a credential and
// checks that the caller's own policy allows everything it allows. It
// returns the policy's stored form.
func (s *Service) checkGrant(ctx context.Context, policy Policy) (string, error) {
	if err := policy.Validate(); err != nil {
		return "", err
	}
	caller := PrincipalFrom(ctx)
	if caller == nil {
		return "", fmt.Errorf("%w: no authenticated caller", ErrUnauthorized)
	}
	action, resource, ok, err := covers(caller.Policy, policy)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrExceedsCaller, err)
	}
	if !ok {
		return "", fmt.Errorf("%w: the policy allows %s on %s, which the caller's own policy does not", ErrExceedsCaller, action, resource)
	}
	return encodeStoredPolicy(policy)
}

// checkManage checks that the caller in ctx may change or delete the
// credential e: it is not the caller, and the caller's policy allows
// everything e's policy allows.
func checkManage(ctx context.Context, e *credEntry) error {
	caller := PrincipalFrom(ctx)
	if caller == nil {
		return fmt.Errorf("%w: no authenticated caller", ErrUnauthorized)
	}
	if caller.SecretID != "" && caller.SecretID == e.cred.SecretID {
		return ErrSelfChange
	}
	_, _, ok, err := covers(caller.Policy, e.info.Policy)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrExceedsCaller, err)
	}
	if !ok {
		return fmt.Errorf("%w: the credential %s holds rights the caller does not", ErrExceedsCaller, e.cred.SecretID)
	}
	return nil
}

// manageCredential checks (checkManage) the credential secretID as cached
// and runs f under the credentials lock if the entry is still the one
// checked. The check runs outside the lock, which LookupCredential takes
// on every request; a concurrent change to the same credential makes it
// check again, a few times, then fail with ErrBusy.
func (s *Service) manageCredential(ctx context.Context, secretID string, f func(*credEntry) error) error {
	s.syncCredential(ctx, secretID)
	for range 3 {
		s.credMu.RLock()
		e := s.creds[secretID]
		s.credMu.RUnlock()
		if e == nil {
			return fmt.Errorf("%w: %s", ErrCredentialNotFound, secretID)
		}
		if err := checkManage(ctx, e); err != nil {
			return err
		}
		s.credMu.Lock()
		if s.creds[secretID] != e {
			s.credMu.Unlock()
			continue
		}
		err := f(e)
		s.credMu.Unlock()
		return err
	}
	return fmt.Errorf("%w: the credential %s is being changed concurrently; retry", ErrBusy, secretID)
}

// changeCredential applies f to a copy of the cached entry and of its
// stored record (see manageCredential), writes the record (next
// generation, sealed) and publishes the result, so a change is visible to
// the next request. A credential whose stored row failed its integrity
// check is not changed (ErrCredentialNotFound wrapping ErrIntegrity): only
// a reseal makes it count again.
func (s *Service) changeCredential(ctx context.Context, secretID string, f func(credEntry, *store.Credential) credEntry) error {
	return s.manageCredential(ctx, secretID, func(e *credEntry) error {
		if e.suspect != nil {
			return fmt.Errorf("%w: %s: %w", ErrCredentialNotFound, secretID, e.suspect)
		}
		r := e.rec
		ne := f(*e, &r)
		r.Gen = max(e.rec.Gen, e.floor) + 1
		if err := s.sealCred(ctx, &r); err != nil {
			return err
		}
		if err := s.store.UpdateCredential(ctx, r); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("%w: %s", ErrCredentialNotFound, secretID)
			}
			return storeErr("change credential", err)
		}
		ne.rec, ne.floor = r, r.Gen
		s.creds[secretID] = &ne
		s.credGen++
		s.log.Info("kms: credential changed", "secret_id", secretID, "enabled", ne.enabled)
		return nil
	})
}

// syncCredential re-reads a credential before a change on a shared store,
// so that one made or changed on another node a moment ago is acted on as
// stored. Failures are left to the change itself, which needs the store.
func (s *Service) syncCredential(ctx context.Context, secretID string) {
	if s.cluster != nil {
		_ = s.refreshCredential(ctx, secretID)
	}
}

// randomString returns prefix followed by n letters and digits drawn from
// the HSM's random number generator (rejection sampling, no modulo bias).
func (s *Service) randomString(ctx context.Context, prefix string, n int) (string, error) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, len(prefix)+n)
	out = append(out, prefix...)
	for len(out) < len(prefix)+n {
		buf, err := s.hsm.Random(ctx, 2*n)
		if err != nil {
			return "", s.hsmErr(s.log, "random", err)
		}
		for _, b := range buf {
			if int(b) < 256-256%len(alphabet) && len(out) < len(prefix)+n {
				out = append(out, alphabet[int(b)%len(alphabet)])
			}
		}
	}
	return string(out), nil
}
