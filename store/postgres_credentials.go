package store

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
)

// CreateCredential durably stores c; ErrCredentialExists if c.SecretID is
// taken. Other nodes are notified.
func (p *Postgres) CreateCredential(ctx context.Context, c Credential) error {
	if c.SecretID == "" || len(c.SealedKey) == 0 || len(c.KEKObjectID) == 0 {
		return fmt.Errorf("store: create credential %s: missing secret id, sealed key or KEK", c.SecretID)
	}
	created, err := toNanos(c.CreatedAt)
	if err != nil {
		return fmt.Errorf("store: create credential %s: %w", c.SecretID, err)
	}
	err = p.write(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx,
			`INSERT INTO credentials (secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at, gen, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			c.SecretID, c.Name, c.SealedKey, c.KEKObjectID, c.Policy, c.Enabled, created, int64(c.Gen), c.MAC); err != nil {
			if code, constraint := pgConstraint(err); code == "23505" && constraint == "credentials_pkey" {
				return ErrCredentialExists
			}
			return err
		}
		return notify(ctx, tx, "c:"+c.SecretID)
	})
	if err != nil {
		return fmt.Errorf("store: create credential %s: %w", c.SecretID, err)
	}
	return nil
}

const pgCredColumns = `secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at, gen, mac`

func pgScanCred(row pgx.Row) (Credential, error) {
	var (
		c       Credential
		created int64
		gen     int64
	)
	if err := row.Scan(&c.SecretID, &c.Name, &c.SealedKey, &c.KEKObjectID, &c.Policy, &c.Enabled, &created, &gen, &c.MAC); err != nil {
		return Credential{}, err
	}
	c.CreatedAt = fromNanos(created)
	c.Gen = uint64(gen)
	return c, nil
}

// ListCredentials returns every credential, oldest first.
func (p *Postgres) ListCredentials(ctx context.Context) ([]Credential, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+pgCredColumns+` FROM credentials ORDER BY created_at, secret_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list credentials: %w", classify(err))
	}
	defer rows.Close()
	out := []Credential{}
	for rows.Next() {
		c, err := pgScanCred(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list credentials: %w", classify(err))
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list credentials: %w", classify(err))
	}
	return out, nil
}

// GetCredential returns one credential; ErrNotFound if it does not exist.
func (p *Postgres) GetCredential(ctx context.Context, secretID string) (Credential, error) {
	c, err := pgScanCred(p.pool.QueryRow(ctx, `SELECT `+pgCredColumns+` FROM credentials WHERE secret_id = $1`, secretID))
	if errors.Is(err, pgx.ErrNoRows) {
		return Credential{}, fmt.Errorf("store: credential %s: %w", secretID, ErrNotFound)
	}
	if err != nil {
		return Credential{}, fmt.Errorf("store: credential %s: %w", secretID, classify(err))
	}
	return c, nil
}

// UpdateCredential replaces a credential's name, policy, enabled flag,
// generation and MAC if its stored generation is lower than c.Gen (see
// (*SQLite).UpdateCredential); ErrNotFound, ErrStale. Other nodes are
// notified.
func (p *Postgres) UpdateCredential(ctx context.Context, c Credential) error {
	if c.Gen > math.MaxInt64 {
		return fmt.Errorf("store: credential %s: generation above 2^63-1", c.SecretID)
	}
	err := p.write(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx,
			`UPDATE credentials SET name = $1, policy = $2, enabled = $3, gen = $4, mac = $5 WHERE secret_id = $6 AND gen < $4`,
			c.Name, c.Policy, c.Enabled, int64(c.Gen), c.MAC, c.SecretID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			var one int
			if err := tx.QueryRow(ctx, `SELECT 1 FROM credentials WHERE secret_id = $1`, c.SecretID).Scan(&one); errors.Is(err, pgx.ErrNoRows) {
				return ErrNotFound
			} else if err != nil {
				return err
			}
			return ErrStale
		}
		return notify(ctx, tx, "c:"+c.SecretID)
	})
	if err != nil {
		return fmt.Errorf("store: credential %s: %w", c.SecretID, err)
	}
	return nil
}

// DeleteCredential removes a credential; ErrNotFound if it does not exist.
func (p *Postgres) DeleteCredential(ctx context.Context, secretID string) error {
	return p.updateCredential(ctx, secretID, `DELETE FROM credentials WHERE secret_id = $1`, secretID)
}

func (p *Postgres) updateCredential(ctx context.Context, secretID, query string, args ...any) error {
	err := p.write(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, query, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return ErrNotFound
		}
		return notify(ctx, tx, "c:"+secretID)
	})
	if err != nil {
		return fmt.Errorf("store: credential %s: %w", secretID, err)
	}
	return nil
}
