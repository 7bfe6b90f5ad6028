package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/jackc/pgx/v5"
)

// AuditAnchor is the head of one node's audit trail as kmsd last recorded
// it: the trail must not end before line Seq, whose hash is Hash. MAC
// authenticates it (computed inside the HSM by the service); the store
// keeps it as given.
type AuditAnchor struct {
	Node string // the trail's node id
	Seq  uint64
	Hash string
	Time time.Time
	MAC  []byte
}

func checkAnchor(a AuditAnchor) error {
	if a.Node == "" || a.Seq > math.MaxInt64 {
		return errors.New("invalid audit anchor: empty node or seq above 2^63-1")
	}
	_, err := toNanos(a.Time)
	return err
}

// AuditAnchor returns the anchor of node; ErrNotFound if it has none.
func (s *SQLite) AuditAnchor(ctx context.Context, node string) (AuditAnchor, error) {
	a := AuditAnchor{Node: node}
	var seq, at int64
	err := s.r.QueryRowContext(ctx, `SELECT seq, hash, at, mac FROM audit_anchors WHERE node = ?`, node).Scan(&seq, &a.Hash, &at, &a.MAC)
	if errors.Is(err, sql.ErrNoRows) {
		return a, fmt.Errorf("store: audit anchor of %s: %w", node, ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("store: audit anchor of %s: %w", node, err)
	}
	a.Seq, a.Time = uint64(seq), fromNanos(at)
	return a, nil
}

// SetAuditAnchor records a as its node's anchor unless the stored one has
// a higher Seq (ErrStale): an anchor never goes back.
func (s *SQLite) SetAuditAnchor(ctx context.Context, a AuditAnchor) error {
	if err := checkAnchor(a); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	at, _ := toNanos(a.Time)
	res, err := s.w.ExecContext(ctx, `INSERT INTO audit_anchors (node, seq, hash, at, mac) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at, mac = excluded.mac
		WHERE excluded.seq >= audit_anchors.seq`, a.Node, int64(a.Seq), a.Hash, at, a.MAC)
	if err == nil {
		var n int64
		if n, err = res.RowsAffected(); err == nil && n == 0 {
			err = ErrStale
		}
	}
	if err != nil {
		return fmt.Errorf("store: set audit anchor of %s: %w", a.Node, err)
	}
	return nil
}

// AuditAnchor returns the anchor of node; ErrNotFound if it has none.
func (p *Postgres) AuditAnchor(ctx context.Context, node string) (AuditAnchor, error) {
	a := AuditAnchor{Node: node}
	var seq, at int64
	err := p.pool.QueryRow(ctx, `SELECT seq, hash, at, mac FROM audit_anchors WHERE node = $1`, node).Scan(&seq, &a.Hash, &at, &a.MAC)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("store: audit anchor of %s: %w", node, ErrNotFound)
	}
	if err != nil {
		return a, fmt.Errorf("store: audit anchor of %s: %w", node, classify(err))
	}
	a.Seq, a.Time = uint64(seq), fromNanos(at)
	return a, nil
}

// SetAuditAnchor records a unless the stored anchor of its node has a
// higher Seq (ErrStale).
func (p *Postgres) SetAuditAnchor(ctx context.Context, a AuditAnchor) error {
	if err := checkAnchor(a); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	at, _ := toNanos(a.Time)
	tag, err := p.pool.Exec(ctx, `INSERT INTO audit_anchors (node, seq, hash, at, mac) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (node) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, at = excluded.at, mac = excluded.mac
		WHERE excluded.seq >= audit_anchors.seq`, a.Node, int64(a.Seq), a.Hash, at, a.MAC)
	if err != nil {
		return fmt.Errorf("store: set audit anchor of %s: %w", a.Node, classify(err))
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("store: set audit anchor of %s: %w", a.Node, ErrStale)
	}
	return nil
}
