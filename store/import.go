package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	sqlite3 "modernc.org/sqlite/lib"
)

// Imported key material (BYOK): the parameters of pending imports
// (GetParametersForImport) and the material columns of keys, for both
// engines.

func validateImportParams(p ImportParams) error {
	switch {
	case len(p.TokenHash) != 32:
		return errors.New("invalid import parameters: token hash is not 32 bytes")
	case p.KeyID == "":
		return errors.New("invalid import parameters: empty key id")
	case len(p.WrappingObjectID) == 0:
		return errors.New("invalid import parameters: empty wrapping object id")
	}
	if _, err := toNanos(p.CreatedAt); err != nil {
		return fmt.Errorf("invalid import parameters: created at: %w", err)
	}
	if _, err := toNanos(p.ValidTo); err != nil {
		return fmt.Errorf("invalid import parameters: valid to: %w", err)
	}
	return nil
}

func validateMaterial(k Key) error {
	if !k.MaterialValidTo.IsZero() {
		if _, err := toNanos(k.MaterialValidTo); err != nil {
			return fmt.Errorf("invalid key: material valid to: %w", err)
		}
	}
	return nil
}

// setMaterialSQLite writes the material columns of k within tx.
func setMaterialSQLite(ctx context.Context, tx *sql.Tx, k Key) error {
	if err := validateMaterial(k); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `UPDATE keys SET material_valid_to = ?, material_check = ?, material_loaded = ? WHERE id = ?`,
		nullTime(k.MaterialValidTo), k.MaterialCheck, boolInt(k.MaterialLoaded), k.ID)
	return err
}

// setMaterialPG writes the material columns of k within tx.
func setMaterialPG(ctx context.Context, tx pgx.Tx, k Key) error {
	if err := validateMaterial(k); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `UPDATE keys SET material_valid_to = $1, material_check = $2, material_loaded = $3 WHERE id = $4`,
		nullNanos(k.MaterialValidTo), k.MaterialCheck, k.MaterialLoaded, k.ID)
	return classify(err)
}

// AddImportParams durably records p and deletes the pending object whose
// ObjectID is p.WrappingObjectID, in one transaction: on any error nothing
// is changed. It fails if p is invalid or its token hash or wrapping
// object id is already stored.
func (s *SQLite) AddImportParams(ctx context.Context, p ImportParams) (err error) {
	if err := validateImportParams(p); err != nil {
		return fmt.Errorf("store: add import parameters: %w", err)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: add import parameters for key %s: %w", p.KeyID, err)
		}
	}()
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	created, _ := toNanos(p.CreatedAt)
	validTo, _ := toNanos(p.ValidTo)
	_, err = tx.ExecContext(ctx,
		`INSERT INTO import_params (token_hash, key_id, algorithm, wrapping_object_id, created_at, valid_to, mac) VALUES (?, ?, ?, ?, ?, ?, ?)`,
		p.TokenHash, p.KeyID, p.Algorithm, p.WrappingObjectID, created, validTo, p.MAC)
	if isConstraint(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY) || isConstraint(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE) {
		return errors.New("token hash or wrapping object id already stored")
	}
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM pending_objects WHERE object_id = ?`, p.WrappingObjectID); err != nil {
		return err
	}
	return tx.Commit()
}

const importColumns = `token_hash, key_id, algorithm, wrapping_object_id, created_at, valid_to, mac`

func scanImportParams(row interface{ Scan(...any) error }) (ImportParams, error) {
	var (
		p                ImportParams
		created, validTo int64
	)
	if err := row.Scan(&p.TokenHash, &p.KeyID, &p.Algorithm, &p.WrappingObjectID, &created, &validTo, &p.MAC); err != nil {
		return ImportParams{}, err
	}
	p.CreatedAt, p.ValidTo = fromNanos(created), fromNanos(validTo)
	return p, nil
}

// GetImportParams returns the import parameters whose token hash is
// tokenHash; ErrNotFound if there are none.
func (s *SQLite) GetImportParams(ctx context.Context, tokenHash []byte) (ImportParams, error) {
	p, err := scanImportParams(s.r.QueryRowContext(ctx, `SELECT `+importColumns+` FROM import_params WHERE token_hash = ?`, tokenHash))
	if errors.Is(err, sql.ErrNoRows) {
		return ImportParams{}, fmt.Errorf("store: get import parameters: %w", ErrNotFound)
	}
	if err != nil {
		return ImportParams{}, fmt.Errorf("store: get import parameters: %w", err)
	}
	return p, nil
}

// ListImportParams returns every stored set of import parameters, oldest
// first; an empty slice if there are none.
func (s *SQLite) ListImportParams(ctx context.Context) ([]ImportParams, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+importColumns+` FROM import_params ORDER BY created_at, token_hash`)
	if err != nil {
		return nil, fmt.Errorf("store: list import parameters: %w", err)
	}
	defer rows.Close()
	out := []ImportParams{}
	for rows.Next() {
		p, err := scanImportParams(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list import parameters: %w", err)
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list import parameters: %w", err)
	}
	return out, nil
}

// DeleteImportParams durably removes the import parameters whose token
// hash is tokenHash; deleting absent ones returns nil.
func (s *SQLite) DeleteImportParams(ctx context.Context, tokenHash []byte) error {
	if _, err := s.w.ExecContext(ctx, `DELETE FROM import_params WHERE token_hash = ?`, tokenHash); err != nil {
		return fmt.Errorf("store: delete import parameters: %w", err)
	}
	return nil
}

// SetImportParamsMAC replaces the MAC of a set of import parameters (reseal).
func (s *SQLite) SetImportParamsMAC(ctx context.Context, tokenHash, mac []byte) error {
	if _, err := s.w.ExecContext(ctx, `UPDATE import_params SET mac = ? WHERE token_hash = ?`, mac, tokenHash); err != nil {
		return fmt.Errorf("store: set import parameters MAC: %w", err)
	}
	return nil
}

// AddImportParams is (*SQLite).AddImportParams on PostgreSQL.
func (p *Postgres) AddImportParams(ctx context.Context, ip ImportParams) (err error) {
	if err := validateImportParams(ip); err != nil {
		return fmt.Errorf("store: add import parameters: %w", err)
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("store: add import parameters for key %s: %w", ip.KeyID, err)
		}
	}()
	created, _ := toNanos(ip.CreatedAt)
	validTo, _ := toNanos(ip.ValidTo)
	return p.write(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx,
			`INSERT INTO import_params (token_hash, key_id, algorithm, wrapping_object_id, created_at, valid_to, mac) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
			ip.TokenHash, ip.KeyID, ip.Algorithm, ip.WrappingObjectID, created, validTo, ip.MAC); err != nil {
			if code, _ := pgConstraint(err); code == "23505" {
				return errors.New("token hash or wrapping object id already stored")
			}
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM pending_objects WHERE object_id = $1`, ip.WrappingObjectID)
		return err
	})
}

// GetImportParams is (*SQLite).GetImportParams on PostgreSQL.
func (p *Postgres) GetImportParams(ctx context.Context, tokenHash []byte) (ImportParams, error) {
	ip, err := scanImportParams(p.pool.QueryRow(ctx, `SELECT `+importColumns+` FROM import_params WHERE token_hash = $1`, tokenHash))
	if errors.Is(err, pgx.ErrNoRows) {
		return ImportParams{}, fmt.Errorf("store: get import parameters: %w", ErrNotFound)
	}
	if err != nil {
		return ImportParams{}, fmt.Errorf("store: get import parameters: %w", classify(err))
	}
	return ip, nil
}

// ListImportParams is (*SQLite).ListImportParams on PostgreSQL.
func (p *Postgres) ListImportParams(ctx context.Context) ([]ImportParams, error) {
	rows, err := p.pool.Query(ctx, `SELECT `+importColumns+` FROM import_params ORDER BY created_at, token_hash`)
	if err != nil {
		return nil, fmt.Errorf("store: list import parameters: %w", classify(err))
	}
	defer rows.Close()
	out := []ImportParams{}
	for rows.Next() {
		ip, err := scanImportParams(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list import parameters: %w", classify(err))
		}
		out = append(out, ip)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list import parameters: %w", classify(err))
	}
	return out, nil
}

// DeleteImportParams is (*SQLite).DeleteImportParams on PostgreSQL.
func (p *Postgres) DeleteImportParams(ctx context.Context, tokenHash []byte) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM import_params WHERE token_hash = $1`, tokenHash); err != nil {
		return fmt.Errorf("store: delete import parameters: %w", classify(err))
	}
	return nil
}

// SetImportParamsMAC is (*SQLite).SetImportParamsMAC on PostgreSQL.
func (p *Postgres) SetImportParamsMAC(ctx context.Context, tokenHash, mac []byte) error {
	if _, err := p.pool.Exec(ctx, `UPDATE import_params SET mac = $1 WHERE token_hash = $2`, mac, tokenHash); err != nil {
		return fmt.Errorf("store: set import parameters MAC: %w", classify(err))
	}
	return nil
}
