package httpapi

import (
	"context"
	"errors"
	"hash/maphash"
	"sync"
	"time"
)

// This file holds what authentication remembers between requests inside
// the signature window:
//   - the nonces of signature v1 (legacy API and API 3.0's form shape),
//     keyed (SecretId, Nonce, Timestamp): a replay is refused, two
//     different requests that draw the same small Nonce are not;
//   - the TC3 signatures whose action is not signed, with the action each
//     was first seen with: the signature is refused with any other action.

// NonceStore remembers signature v1 (SecretId, Nonce, Timestamp) keys, so
// that a replay inside the signature window is refused. The default is an
// in-memory cache of one process; nodes behind one load balancer share one
// store (kmsd plugs in its PostgreSQL store), so a replay sent to another
// node is refused too. Implementations must be safe for concurrent use.
type NonceStore interface {
	// UseNonce records key as used until expiry and reports whether it
	// was fresh: not recorded with an expiry at or after now. Of
	// concurrent uses of one key exactly one is fresh. It returns
	// ErrNoncesFull when it cannot remember more, and any other error
	// when it cannot answer (the request is then refused as temporarily
	// unavailable).
	UseNonce(ctx context.Context, key string, expiry, now time.Time) (fresh bool, err error)
}

// ErrNoncesFull: the nonce store is full (legacy 4400, RequestLimitExceeded).
var ErrNoncesFull = errors.New("httpapi: too many nonces in the replay window")

// UseNonce implements NonceStore.
func (c *nonceCache) UseNonce(_ context.Context, key string, expiry, now time.Time) (bool, error) {
	switch c.use(key, 0, expiry, now) {
	case nonceReplayed:
		return false, nil
	case nonceFull:
		return false, ErrNoncesFull
	}
	return true, nil
}

// nonceCache remembers keys (v1 nonces, TC3 signatures), each with a
// 64-bit tag (the hash of a TC3 signature's action; 0 for nonces), until
// their timestamp leaves the signature window. It is bounded: when full it
// refuses new requests rather than forget keys.
//
// Memory: a key is kept as a 128-bit keyed hash (two maphash values with
// random seeds, so nobody can aim collisions at another caller's keys),
// its expiry and its tag, in one map per minute of expiry; a minute's map
// is dropped whole once every expiry in it has passed. Nothing is ever
// deleted from a map: Go's maps do not reuse deleted slots, and one map
// with a delete per expired nonce grew without bound under steady traffic.
// A key's expiry must be a function of the key (the v1 key holds its
// Timestamp; a TC3 signature signs its own): a lookup then checks one
// minute's map only. Entries hold no pointers, so the garbage collector
// does not scan them.
type nonceCache struct {
	mu           sync.Mutex
	seed1, seed2 maphash.Seed
	slots        map[int64]map[nonceKey]nonceEntry // expiry/nonceSlot -> key -> entry
	count        int                               // entries in slots
	swept        int64                             // slots before this one are dropped
	max          int
}

type nonceKey [2]uint64

type nonceEntry struct {
	expiry int64 // unix seconds
	tag    uint64
}

const nonceSlot = 60 // seconds of expiry per map

type nonceResult int

const (
	nonceFresh    nonceResult = iota
	nonceReplayed             // seen with the same tag
	nonceConflict             // seen with another tag
	nonceFull
)

func newNonceCache(max int) *nonceCache {
	return &nonceCache{seed1: maphash.MakeSeed(), seed2: maphash.MakeSeed(),
		slots: make(map[int64]map[nonceKey]nonceEntry), max: max}
}

// use records key with tag until expiry unless it is recorded already
// (with an expiry at or after now), and says which.
func (c *nonceCache) use(key string, tag uint64, expiry, now time.Time) nonceResult {
	return c.record(key, tag, expiry, now, false)
}

// retag records key with tag in place of whatever tag it had (the action
// the cluster's ledger holds for a signature).
func (c *nonceCache) retag(key string, tag uint64, expiry, now time.Time) {
	c.record(key, tag, expiry, now, true)
}

func (c *nonceCache) record(key string, tag uint64, expiry, now time.Time, replace bool) nonceResult {
	k := nonceKey{maphash.String(c.seed1, key), maphash.String(c.seed2, key)}
	n := now.Unix()
	c.mu.Lock()
	defer c.mu.Unlock()
	// Every expiry of a slot before now's is below the slot's end, which
	// is at most now: those slots hold only expired entries.
	if cur := n / nonceSlot; cur > c.swept {
		for s, m := range c.slots {
			if s < cur {
				c.count -= len(m)
				delete(c.slots, s)
			}
		}
		c.swept = cur
	}
	e := expiry.Unix()
	if e < n {
		return nonceFresh // expired already: nothing to remember
	}
	// A key's expiry is a function of the key (its timestamp is part of
	// it, or signed by it), so a key can only be in its expiry's slot.
	s := e / nonceSlot
	m := c.slots[s]
	if old, ok := m[k]; ok && old.expiry >= n {
		if replace {
			m[k] = nonceEntry{expiry: old.expiry, tag: tag}
			return nonceReplayed
		}
		if old.tag != tag {
			return nonceConflict
		}
		return nonceReplayed
	}
	if c.count >= c.max {
		return nonceFull
	}
	if m == nil {
		// Sized as the fullest open minute: under steady traffic a
		// minute's map then never grows (rehashing a map of a million
		// entries costs more than the entries themselves).
		hint := 0
		for _, o := range c.slots {
			hint = max(hint, len(o))
		}
		m = make(map[nonceKey]nonceEntry, hint)
		c.slots[s] = m
	}
	if _, ok := m[k]; !ok {
		c.count++
	}
	m[k] = nonceEntry{expiry: e, tag: tag}
	return nonceFresh
}

// SignatureUse is a TC3 signature (lowercase hex, as sent) accepted with an
// action it does not sign, remembered until Expiry (its timestamp plus the
// signature window).
type SignatureUse struct {
	Signature string
	Action    string
	Expiry    time.Time
}

// SignatureLedger shares the TC3 signatures accepted by the nodes of a
// cluster, with the action each was accepted with, so that a signature
// accepted by one node is refused with another action by the others.
// kmsd plugs in its PostgreSQL store. Implementations must be safe for
// concurrent use.
type SignatureLedger interface {
	// PublishSignatures records uses in one batch. For each signature
	// already recorded with a different action, it returns the recorded
	// use (a signature the cluster has accepted with two actions).
	PublishSignatures(ctx context.Context, uses []SignatureUse) (conflicts []SignatureUse, err error)
	// ClaimSignature records use unless its signature is recorded already,
	// and returns the action recorded for it (use.Action when it was not).
	// Of concurrent claims of one signature, all return the same action.
	ClaimSignature(ctx context.Context, use SignatureUse) (action string, err error)
	// SignaturesSince returns the uses recorded by other nodes after
	// cursor (an opaque position; a negative cursor means from now on: it
	// returns none and the current position), at most limit of them, and
	// the position to ask from next.
	SignaturesSince(ctx context.Context, cursor int64, limit int) (uses []SignatureUse, next int64, err error)
}

// DefaultSignatureSync is how often a node publishes the TC3 signatures it
// accepted and reads those of the other nodes (Config.SignatureSync).
const DefaultSignatureSync = 100 * time.Millisecond

// maxPendingSignatures bounds the signatures waiting to be published; a
// node that cannot publish more refuses TC3 requests whose action is not
// signed (RequestLimitExceeded) rather than accept them unannounced.
const maxPendingSignatures = 1 << 20

// sigSync publishes a node's accepted TC3 signatures to the ledger and
// reads the other nodes' into the node's cache, every interval.
type sigSync struct {
	ledger   SignatureLedger
	interval time.Duration
	cache    *nonceCache
	tag      func(action string) uint64
	onError  func(what string, err error)
	onClash  func(mine, theirs SignatureUse)

	mu      sync.Mutex
	pending []SignatureUse

	failing map[string]bool // what is failing now (run's goroutine only)

	stop chan struct{}
	done chan struct{}
}

// add queues a use for publication; false when the queue is full.
func (p *sigSync) add(u SignatureUse) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.pending) >= maxPendingSignatures {
		return false
	}
	p.pending = append(p.pending, u)
	return true
}

func (p *sigSync) run(now func() time.Time) {
	defer close(p.done)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { <-p.stop; cancel() }()
	// Each pass reads from where the pass before the last one ended: a
	// row numbered before another may commit after it, and is then read
	// on the next pass (re-reading a row changes nothing).
	var from, last int64
	started := false
	var batch []SignatureUse
	for {
		select {
		case <-p.stop:
			p.flush(ctx, &batch) // best effort: what was accepted is announced
			return
		case <-t.C:
		}
		p.flush(ctx, &batch)
		if !started {
			_, c, err := p.ledger.SignaturesSince(ctx, -1, 0)
			if err != nil {
				p.failed("reading the other nodes' TC3 signatures", err)
				continue
			}
			from, last, started = c, c, true
		}
		cursor := from
		for {
			uses, next, err := p.ledger.SignaturesSince(ctx, cursor, sigPage)
			if err != nil {
				p.failed("reading the other nodes' TC3 signatures", err)
				break
			}
			p.failed("reading the other nodes' TC3 signatures", nil)
			cursor = next
			n := now()
			for _, u := range uses {
				if p.cache.use(u.Signature, p.tag(u.Action), u.Expiry, n) == nonceConflict {
					p.onClash(SignatureUse{Signature: u.Signature, Action: "(another action)"}, u)
				}
			}
			if len(uses) < sigPage {
				break
			}
		}
		from, last = last, cursor
	}
}

// sigPage is how many signatures one read of the ledger returns at most.
const sigPage = 10000

// flush publishes the queued uses (and those a failed attempt kept in
// batch).
func (p *sigSync) flush(ctx context.Context, batch *[]SignatureUse) {
	p.mu.Lock()
	*batch = append(*batch, p.pending...)
	p.pending = p.pending[:0]
	p.mu.Unlock()
	if len(*batch) == 0 {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conflicts, err := p.ledger.PublishSignatures(cctx, *batch)
	cancel()
	if err != nil {
		p.failed("publishing TC3 signatures", err)
		if len(*batch) > maxPendingSignatures {
			*batch = (*batch)[len(*batch)-maxPendingSignatures:]
		}
		return
	}
	p.failed("publishing TC3 signatures", nil)
	if len(conflicts) > 0 {
		mine := make(map[string]SignatureUse, len(conflicts))
		for _, u := range *batch {
			mine[u.Signature] = u
		}
		for _, c := range conflicts {
			p.onClash(mine[c.Signature], c)
		}
	}
	*batch = (*batch)[:0]
}

// failed reports the outcome of what (err nil: it worked) to onError when
// it starts failing and when it works again, not at every attempt.
func (p *sigSync) failed(what string, err error) {
	if p.failing == nil {
		p.failing = map[string]bool{}
	}
	if (err != nil) == p.failing[what] {
		return
	}
	p.failing[what] = err != nil
	p.onError(what, err)
}

func (p *sigSync) close() {
	close(p.stop)
	<-p.done
}
