package store

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	sqlite3 "modernc.org/sqlite/lib"
)

// ErrCredentialExists means a credential with that SecretId already exists.
var ErrCredentialExists = errors.New("store: credential already exists")

// Credential is an API credential. Its SecretKey is held only sealed by the
// HSM: SealedKey is IV || ciphertext || tag under the token object
// KEKObjectID.
type Credential struct {
	SecretID    string
	Name        string
	SealedKey   []byte
	KEKObjectID []byte
	Policy      string // JSON policy document
	Enabled     bool
	CreatedAt   time.Time
	// Gen and MAC: see Key.Gen and Key.MAC.
	Gen uint64
	MAC []byte
}

// CreateCredential durably stores c. It returns an error wrapping
// ErrCredentialExists if c.SecretID is taken.
func (s *SQLite) CreateCredential(ctx context.Context, c Credential) error {
	if c.SecretID == "" || len(c.SealedKey) == 0 || len(c.KEKObjectID) == 0 {
		return fmt.Errorf("store: create credential %s: missing secret id, sealed key or KEK", c.SecretID)
	}
	created, err := toNanos(c.CreatedAt)
	if err != nil {
		return fmt.Errorf("store: create credential %s: %w", c.SecretID, err)
	}
	_, err = s.w.ExecContext(ctx,
		`INSERT INTO credentials (secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at, gen, mac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		c.SecretID, c.Name, c.SealedKey, c.KEKObjectID, c.Policy, boolInt(c.Enabled), created, int64(c.Gen), c.MAC)
	if err != nil {
		if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) {
			return fmt.Errorf("store: create credential %s: %w", c.SecretID, ErrCredentialExists)
		}
		return fmt.Errorf("store: create credential %s: %w", c.SecretID, err)
	}
	return nil
}

// ListCredentials returns every credential, oldest first.
func (s *SQLite) ListCredentials(ctx context.Context) ([]Credential, error) {
	rows, err := s.r.QueryContext(ctx,
		`SELECT secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at, gen, mac FROM credentials ORDER BY created_at, secret_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list credentials: %w", err)
	}
	defer rows.Close()
	out := []Credential{}
	for rows.Next() {
		var (
			c       Credential
			enabled int64
			created int64
			gen     int64
		)
		if err := rows.Scan(&c.SecretID, &c.Name, &c.SealedKey, &c.KEKObjectID, &c.Policy, &enabled, &created, &gen, &c.MAC); err != nil {
			return nil, fmt.Errorf("store: list credentials: %w", err)
		}
		c.Enabled = enabled == 1
		c.CreatedAt = fromNanos(created)
		c.Gen = uint64(gen) // CHECK constraint keeps it >= 0
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list credentials: %w", err)
	}
	return out, nil
}

// UpdateCredential replaces the name, policy, enabled flag, generation and
// MAC of the stored credential c.SecretID with c's, if the stored
// generation is lower than c.Gen. SealedKey, KEKObjectID and CreatedAt are
// not changed. ErrNotFound if it does not exist, ErrStale if its
// generation is not lower than c.Gen.
func (s *SQLite) UpdateCredential(ctx context.Context, c Credential) error {
	if c.Gen > math.MaxInt64 {
		return fmt.Errorf("store: credential %s: generation above 2^63-1", c.SecretID)
	}
	err := s.updateCredential(ctx, c.SecretID,
		`UPDATE credentials SET name = ?, policy = ?, enabled = ?, gen = ?, mac = ? WHERE secret_id = ? AND gen < ?`,
		c.Name, c.Policy, boolInt(c.Enabled), int64(c.Gen), c.MAC, c.SecretID, int64(c.Gen))
	if errors.Is(err, ErrNotFound) {
		var one int
		if s.r.QueryRowContext(ctx, `SELECT 1 FROM credentials WHERE secret_id = ?`, c.SecretID).Scan(&one) == nil {
			return fmt.Errorf("store: credential %s: %w", c.SecretID, ErrStale)
		}
	}
	return err
}

// DeleteCredential removes a credential; ErrNotFound if it does not exist.
func (s *SQLite) DeleteCredential(ctx context.Context, secretID string) error {
	return s.updateCredential(ctx, secretID, `DELETE FROM credentials WHERE secret_id = ?`, secretID)
}

func (s *SQLite) updateCredential(ctx context.Context, secretID, query string, args ...any) error {
	res, err := s.w.ExecContext(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("store: credential %s: %w", secretID, err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return fmt.Errorf("store: credential %s: %w", secretID, err)
	} else if n == 0 {
		return fmt.Errorf("store: credential %s: %w", secretID, ErrNotFound)
	}
	return nil
}

func boolInt(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
