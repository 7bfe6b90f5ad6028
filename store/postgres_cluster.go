package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ChangeKind says what a Change names.
type ChangeKind int

const (
	// ChangeKey: the key Change.ID was created or changed.
	ChangeKey ChangeKind = iota + 1
	// ChangeCredential: the credential Change.ID was created, changed or
	// deleted.
	ChangeCredential
	// ChangeAll: anything may have changed (the watch was (re)connected;
	// notifications sent while it was down are lost). Re-read everything.
	ChangeAll
	// ChangeAlive: the watch connection was found alive just now; every
	// change committed before the previous ChangeAlive has been delivered.
	ChangeAlive
)

// Change is one notification delivered by (*Postgres).Watch.
type Change struct {
	Kind ChangeKind
	ID   string // key id or SecretId; "" for ChangeAll and ChangeAlive
}

// notifyChannel is the LISTEN/NOTIFY channel of committed metadata changes.
// Payloads are "k:<keyID>" and "c:<SecretId>".
const notifyChannel = "hsmkms_changes"

// Advisory lock ids (pg_advisory_lock(class, id)). class 0x484b4d53 ("HKMS")
// is hsmkms's; ids 1 and 2 are the migration and maintenance locks, keys
// use class+1 with a hash of their id.
const (
	lockClass       = int32(applicationID)
	lockMigration   = int32(1)
	lockMaintenance = int32(2)
	lockClassKeys   = int32(applicationID + 1)
)

// notify queues a change notification, sent when tx commits.
func notify(ctx context.Context, tx pgx.Tx, payload string) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, payload)
	return err
}

// LockKey takes a cluster-wide lock on keyID, waiting for it within ctx,
// and returns the function that releases it. Nodes hold it around every
// change to a key (read the key, act, write), so changes made on different
// nodes never overwrite each other. If the holder dies, the database
// releases the lock when the connection drops.
func (p *Postgres) LockKey(ctx context.Context, keyID string) (unlock func(), err error) {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("store: lock key %s: %w", keyID, classify(err))
	}
	h := fnv.New32a()
	h.Write([]byte(keyID))
	id := int32(h.Sum32())
	if _, err := c.Exec(ctx, `SELECT pg_advisory_lock($1, $2)`, lockClassKeys, id); err != nil {
		// The session may hold the lock if the error came late: drop it.
		_ = c.Conn().Close(context.Background())
		c.Release()
		return nil, fmt.Errorf("store: lock key %s: %w", keyID, classify(err))
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := c.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, lockClassKeys, id); err != nil {
			_ = c.Conn().Close(context.Background())
		}
		c.Release()
	}, nil
}

// TryMaintenanceLock reports whether this store holds the cluster-wide
// maintenance lock, taking it if it is free. Once taken it is held (on a
// dedicated connection) until Close or until that connection fails; every
// call checks the connection, so a holder that lost it learns so at its
// next call. Exactly one live node holds it at any time; when the holder
// dies, its session ends and another node takes the lock at its next try.
func (p *Postgres) TryMaintenanceLock(ctx context.Context) (bool, error) {
	p.leaderMu.Lock()
	defer p.leaderMu.Unlock()
	if p.leader != nil {
		if err := p.leader.Ping(ctx); err == nil {
			return true, nil
		}
		_ = p.leader.Conn().Close(context.Background())
		p.leader.Release()
		p.leader = nil
	}
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return false, fmt.Errorf("store: maintenance lock: %w", classify(err))
	}
	var got bool
	if err := c.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, lockClass, lockMaintenance).Scan(&got); err != nil {
		_ = c.Conn().Close(context.Background())
		c.Release()
		return false, fmt.Errorf("store: maintenance lock: %w", classify(err))
	}
	if !got {
		c.Release()
		return false, nil
	}
	p.leader = c
	return true, nil
}

// Watch delivers the changes committed by every node (including this one)
// to changed, in commit order, until ctx is done; it then returns ctx's
// error. It keeps one connection LISTENing; after every (re)connection it
// delivers ChangeAll (changes made meanwhile were not delivered), and about
// every aliveEvery it checks the connection and delivers ChangeAlive.
// changed runs on Watch's goroutine and should return quickly.
func (p *Postgres) Watch(ctx context.Context, aliveEvery time.Duration, changed func(Change)) error {
	if aliveEvery <= 0 {
		aliveEvery = 250 * time.Millisecond
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := p.watchOnce(ctx, aliveEvery, changed)
		if ctx.Err() != nil {
			break
		}
		_ = err // the caller sees the outage through missing ChangeAlive
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
	return ctx.Err()
}

func (p *Postgres) watchOnce(ctx context.Context, aliveEvery time.Duration, changed func(Change)) error {
	c, err := p.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	conn := c.Hijack() // never returned to the pool: it stays LISTENing
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LISTEN `+notifyChannel); err != nil {
		return err
	}
	changed(Change{Kind: ChangeAll})
	changed(Change{Kind: ChangeAlive})
	for {
		wctx, cancel := context.WithTimeout(ctx, aliveEvery)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			kind, id, ok := strings.Cut(n.Payload, ":")
			switch {
			case ok && kind == "k":
				changed(Change{Kind: ChangeKey, ID: id})
			case ok && kind == "c":
				changed(Change{Kind: ChangeCredential, ID: id})
			default:
				changed(Change{Kind: ChangeAll})
			}
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err):
			pctx, cancel := context.WithTimeout(ctx, aliveEvery)
			err := conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
			changed(Change{Kind: ChangeAlive})
		default:
			return err
		}
	}
}

// UseNonce records a legacy API (SecretId, Nonce) key as used until
// expiry and reports whether it was fresh, i.e. not recorded with an expiry
// at or after now. It is atomic across nodes: of concurrent uses of one key
// exactly one is fresh. Expired rows are removed by PurgeNonces.
func (p *Postgres) UseNonce(ctx context.Context, key []byte, expiry, now time.Time) (bool, error) {
	var got int
	err := p.pool.QueryRow(ctx,
		`INSERT INTO legacy_nonces (nonce, expires_at) VALUES ($1, $2)
		 ON CONFLICT (nonce) DO UPDATE SET expires_at = EXCLUDED.expires_at WHERE legacy_nonces.expires_at < $3
		 RETURNING 1`, key, expiry.Unix(), now.Unix()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: use nonce: %w", classify(err))
	}
	return true, nil
}

// PurgeNonces deletes the nonces and the TC3 signatures (PublishSignatures)
// that expired before now.
func (p *Postgres) PurgeNonces(ctx context.Context, now time.Time) error {
	if _, err := p.pool.Exec(ctx, `DELETE FROM legacy_nonces WHERE expires_at < $1`, now.Unix()); err != nil {
		return fmt.Errorf("store: purge nonces: %w", classify(err))
	}
	if _, err := p.pool.Exec(ctx, `DELETE FROM tc3_signatures WHERE expires_at < $1`, now.Unix()); err != nil {
		return fmt.Errorf("store: purge signatures: %w", classify(err))
	}
	return nil
}
