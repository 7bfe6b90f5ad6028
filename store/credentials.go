package store

import (
	"context"
	"errors"
	"fmt"
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
		`INSERT INTO credentials (secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		c.SecretID, c.Name, c.SealedKey, c.KEKObjectID, c.Policy, boolInt(c.Enabled), created)
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
		`SELECT secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at FROM credentials ORDER BY created_at, secret_id`)
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
		)
		if err := rows.Scan(&c.SecretID, &c.Name, &c.SealedKey, &c.KEKObjectID, &c.Policy, &enabled, &created); err != nil {
			return nil, fmt.Errorf("store: list credentials: %w", err)
		}
		c.Enabled = enabled == 1
		c.CreatedAt = fromNanos(created)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list credentials: %w", err)
	}
	return out, nil
}

// SetCredentialEnabled enables or disables a credential; ErrNotFound if it
// does not exist.
func (s *SQLite) SetCredentialEnabled(ctx context.Context, secretID string, enabled bool) error {
	return s.updateCredential(ctx, secretID, `UPDATE credentials SET enabled = ? WHERE secret_id = ?`, boolInt(enabled), secretID)
}

// SetCredentialPolicy replaces a credential's policy; ErrNotFound if it does
// not exist.
func (s *SQLite) SetCredentialPolicy(ctx context.Context, secretID, policy string) error {
	return s.updateCredential(ctx, secretID, `UPDATE credentials SET policy = ? WHERE secret_id = ?`, policy, secretID)
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
