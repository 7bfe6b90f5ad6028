package store

import (
	"context"
	"errors"
	"fmt"

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
			`INSERT INTO credentials (secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			c.SecretID, c.Name, c.SealedKey, c.KEKObjectID, c.Policy, c.Enabled, created); err != nil {
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

const pgCredColumns = `secret_id, name, sealed_key, kek_object_id, policy, enabled, created_at`

func pgScanCred(row pgx.Row) (Credential, error) {
	var (
		c       Credential
		created int64
	)
	if err := row.Scan(&c.SecretID, &c.Name, &c.SealedKey, &c.KEKObjectID, &c.Policy, &c.Enabled, &created); err != nil {
		return Credential{}, err
	}
	c.CreatedAt = fromNanos(created)
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

// SetCredentialEnabled enables or disables a credential; ErrNotFound if it
// does not exist.
func (p *Postgres) SetCredentialEnabled(ctx context.Context, secretID string, enabled bool) error {
	return p.updateCredential(ctx, secretID, `UPDATE credentials SET enabled = $1 WHERE secret_id = $2`, enabled, secretID)
}

// SetCredentialPolicy replaces a credential's policy; ErrNotFound if it
// does not exist.
func (p *Postgres) SetCredentialPolicy(ctx context.Context, secretID, policy string) error {
	return p.updateCredential(ctx, secretID, `UPDATE credentials SET policy = $1 WHERE secret_id = $2`, policy, secretID)
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
