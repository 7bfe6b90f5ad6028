package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SignatureUse is a TC3 signature (its 32 bytes) accepted with an action
// the signature does not cover, remembered until Expiry. See
// (*Postgres).PublishSignatures.
type SignatureUse struct {
	Sig    []byte
	Action string
	Expiry time.Time
}

// maxActionLen bounds the stored action: longer ones are no action kmsd
// serves, and are stored cut.
const maxActionLen = 64

func cutAction(a string) string {
	if len(a) > maxActionLen {
		return a[:maxActionLen]
	}
	return a
}

// PublishSignatures records, for node (an id of the calling process),
// TC3 signatures accepted with an unsigned action, in one statement. A
// signature recorded already with the same action is left as it is; for
// each recorded with a different action it returns the recorded use (the
// cluster accepted one signature with two actions). Duplicate signatures
// in uses are recorded once, the first one's action winning. Expired rows
// are removed by PurgeNonces.
func (p *Postgres) PublishSignatures(ctx context.Context, node []byte, uses []SignatureUse) ([]SignatureUse, error) {
	if len(uses) == 0 {
		return nil, nil
	}
	seen := make(map[string]bool, len(uses))
	sigs := make([][]byte, 0, len(uses))
	actions := make([]string, 0, len(uses))
	exps := make([]int64, 0, len(uses))
	for _, u := range uses {
		if len(u.Sig) == 0 {
			return nil, errors.New("store: publish signatures: empty signature")
		}
		if seen[string(u.Sig)] {
			continue
		}
		seen[string(u.Sig)] = true
		sigs = append(sigs, u.Sig)
		actions = append(actions, cutAction(u.Action))
		exps = append(exps, u.Expiry.Unix())
	}
	// A conflicting row is "updated" to itself only when its action
	// differs, so that RETURNING reports it; rows with the same action
	// are not touched and not returned.
	rows, err := p.pool.Query(ctx,
		`INSERT INTO tc3_signatures (sig, action, node, expires_at)
		 SELECT s, a, $4, e FROM unnest($1::bytea[], $2::text[], $3::bigint[]) AS u(s, a, e)
		 ON CONFLICT (sig) DO UPDATE SET expires_at = tc3_signatures.expires_at
		 WHERE tc3_signatures.action <> EXCLUDED.action
		 RETURNING sig, action, expires_at`, sigs, actions, exps, node)
	if err != nil {
		return nil, fmt.Errorf("store: publish signatures: %w", classify(err))
	}
	defer rows.Close()
	mine := make(map[string]string, len(sigs))
	for i, s := range sigs {
		mine[string(s)] = actions[i]
	}
	var conflicts []SignatureUse
	for rows.Next() {
		var u SignatureUse
		var exp int64
		if err := rows.Scan(&u.Sig, &u.Action, &exp); err != nil {
			return nil, fmt.Errorf("store: publish signatures: %w", classify(err))
		}
		if mine[string(u.Sig)] != u.Action {
			u.Expiry = time.Unix(exp, 0)
			conflicts = append(conflicts, u)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: publish signatures: %w", classify(err))
	}
	return conflicts, nil
}

// ClaimSignature records use for node unless its signature is recorded
// already, and returns the action recorded for it: use.Action when it was
// not. It is atomic across nodes: concurrent claims of one signature all
// return the action of the one that was recorded.
func (p *Postgres) ClaimSignature(ctx context.Context, node []byte, use SignatureUse) (string, error) {
	if len(use.Sig) == 0 {
		return "", errors.New("store: claim signature: empty signature")
	}
	var action string
	err := p.pool.QueryRow(ctx,
		`INSERT INTO tc3_signatures (sig, action, node, expires_at) VALUES ($1, $2, $3, $4)
		 ON CONFLICT (sig) DO UPDATE SET expires_at = tc3_signatures.expires_at
		 RETURNING action`, use.Sig, cutAction(use.Action), node, use.Expiry.Unix()).Scan(&action)
	if err != nil {
		return "", fmt.Errorf("store: claim signature: %w", classify(err))
	}
	return action, nil
}

// SignaturesSince returns up to limit signatures recorded by nodes other
// than node after position cursor, in the order they were numbered, and
// the position to ask from next. A negative cursor asks for the current
// position (and returns no signature). A row numbered before another may
// commit after it: callers re-read from an earlier position to catch it.
func (p *Postgres) SignaturesSince(ctx context.Context, node []byte, cursor int64, limit int) ([]SignatureUse, int64, error) {
	if cursor < 0 {
		var last int64
		if err := p.pool.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM tc3_signatures`).Scan(&last); err != nil {
			return nil, 0, fmt.Errorf("store: signatures: %w", classify(err))
		}
		return nil, last, nil
	}
	rows, err := p.pool.Query(ctx,
		`SELECT seq, sig, action, expires_at FROM tc3_signatures WHERE seq > $1 AND node <> $2 ORDER BY seq LIMIT $3`,
		cursor, node, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("store: signatures: %w", classify(err))
	}
	defer rows.Close()
	var uses []SignatureUse
	next := cursor
	for rows.Next() {
		var u SignatureUse
		var exp int64
		if err := rows.Scan(&next, &u.Sig, &u.Action, &exp); err != nil {
			return nil, 0, fmt.Errorf("store: signatures: %w", classify(err))
		}
		u.Expiry = time.Unix(exp, 0)
		uses = append(uses, u)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, fmt.Errorf("store: signatures: %w", classify(err))
	}
	return uses, next, nil
}
