package main

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"hsmkms/audit"
	"hsmkms/kms"
	"hsmkms/store"
)

// The anchored audit trail.
//
// kmsd keeps the head of its audit trail (sequence number and hash of the
// last line) in the store, sealed by the HSM (kms.SealAuditCheckpoint),
// under the node id of the trail: one trail and one anchor per node. The
// anchor follows the group commit of audit.Writer: every write(2) of a
// group signals the anchoring loop, which records the newest head at most
// once every anchorEvery (so under load one store write covers many
// groups, and none is made per request). Every cfg.cpLines lines or
// cfg.cpInterval, and at shutdown, the loop also appends the sealed head to
// the checkpoint file beside the trail (audit.CheckpointFile), which an
// auditor keeps elsewhere and checks with kmsctl audit verify.
//
// At start-up (checkTrail) kmsd refuses to continue a trail that does not
// reach its anchor (lines cut from the end, or the file replaced by an
// older copy), whose line at the anchor's seq has another hash (the file
// rewritten), whose chain is broken, or that a checkpoint contradicts. The
// operator keeps the file for the investigation and starts a new segment
// with `kmsd audit new-segment`, which is recorded as the segment's first
// line.

// anchorEvery bounds how often the anchor is written to the store.
const anchorEvery = 50 * time.Millisecond

// anchorStore is the store side of the anchors (*store.SQLite, *store.Postgres).
type anchorStore interface {
	AuditAnchor(ctx context.Context, node string) (store.AuditAnchor, error)
	SetAuditAnchor(ctx context.Context, a store.AuditAnchor) error
}

// trailAnchor anchors one node's trail. Its methods are safe for
// concurrent use.
type trailAnchor struct {
	node, path string
	w          *audit.Writer
	svc        *kms.Service
	st         anchorStore
	log        *slog.Logger
	cpLines    uint64
	cpEvery    time.Duration

	sig      chan struct{}
	quit     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	mu       sync.Mutex
	anchored audit.Head // last head written to the store
	cp       audit.Head // last checkpoint written to the file
	cpAt     time.Time
}

func newTrailAnchor(cfg config, log *slog.Logger) *trailAnchor {
	return &trailAnchor{node: cfg.nodeID, path: cfg.auditFile, log: log, cpLines: cfg.cpLines, cpEvery: cfg.cpInterval,
		sig: make(chan struct{}, 1), quit: make(chan struct{}), done: make(chan struct{})}
}

// signal is audit.Options.OnCommit: it never blocks.
func (a *trailAnchor) signal() {
	select {
	case a.sig <- struct{}{}:
	default:
	}
}

// head returns the writer's head.
func (a *trailAnchor) head() audit.Head {
	seq, hash := a.w.Head()
	return audit.Head{Seq: seq, Hash: hash}
}

// errTrail is the error of a trail kmsd refuses to continue.
var errTrail = errors.New("audit: kmsd will not continue this audit trail")

// check compares the trail with its anchor and its checkpoints (see the
// comment at the top). The first start with anchoring records the anchor.
func (a *trailAnchor) check(ctx context.Context) error {
	head := a.head()
	anchor, err := a.st.AuditAnchor(ctx, a.node)
	if errors.Is(err, store.ErrNotFound) {
		if err := a.record(ctx, head, true); err != nil {
			return err
		}
		a.log.Warn("audit: the trail had no anchor in the store (first start with anchoring, or a new node id): anchored at its head",
			"node", a.node, "seq", head.Seq, "hash", head.Hash)
		return nil
	}
	if err != nil {
		return fmt.Errorf("audit: read the trail's anchor: %w", err)
	}
	advice := fmt.Sprintf("Keep %s for the investigation, then start a new segment: kmsd audit new-segment -reason TEXT (same flags as the server)", a.path)
	if err := a.svc.CheckAuditCheckpoint(ctx, anchor); err != nil {
		return fmt.Errorf("%w: the store's anchor of node %q failed its integrity check (%v): the database was edited. %s", errTrail, a.node, err, advice)
	}
	cps, err := audit.ReadCheckpoints(audit.CheckpointFile(a.path))
	if err != nil {
		return fmt.Errorf("%w: %v. %s", errTrail, err, advice)
	}
	var mine []audit.Checkpoint
	for _, c := range cps {
		if c.Node != a.node {
			continue
		}
		mac, _ := hex.DecodeString(c.MAC)
		if err := a.svc.CheckAuditCheckpoint(ctx, store.AuditAnchor{Node: c.Node, Seq: c.Seq, Hash: c.Hash, Time: c.Time, MAC: mac}); err != nil {
			return fmt.Errorf("%w: checkpoint of seq %d in %s failed its integrity check (%v): the checkpoint file was edited. %s",
				errTrail, c.Seq, audit.CheckpointFile(a.path), err, advice)
		}
		mine = append(mine, c)
	}
	mine = append(mine, audit.Checkpoint{Node: a.node, Seq: anchor.Seq, Hash: anchor.Hash, Time: anchor.Time})
	if head.Seq < anchor.Seq {
		return fmt.Errorf("%w: %s ends at line %d but the store's anchor says line %d was written (at %s): lines were cut from its end, or the file was replaced by an older copy. %s",
			errTrail, a.path, head.Seq, anchor.Seq, anchor.Time.UTC().Format(time.RFC3339), advice)
	}
	rep, err := audit.CheckTrail([]string{a.path}, mine)
	if err != nil {
		return fmt.Errorf("%w: %v", errTrail, err)
	}
	if len(rep.Problems) > 0 {
		return fmt.Errorf("%w: %s does not match its anchor or its checkpoints: %s. %s", errTrail, a.path, strings.Join(rep.Problems, "; "), advice)
	}
	a.mu.Lock()
	a.anchored = audit.Head{Seq: anchor.Seq, Hash: anchor.Hash}
	a.cp, a.cpAt = a.anchored, time.Now()
	a.mu.Unlock()
	a.log.Info("audit: trail matches its anchor", "node", a.node, "seq", head.Seq, "anchor_seq", anchor.Seq)
	return nil
}

// record seals head and writes it as the anchor, and to the checkpoint
// file if checkpoint or one is due.
func (a *trailAnchor) record(ctx context.Context, head audit.Head, checkpoint bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if head == a.anchored && !checkpoint {
		return nil
	}
	an := store.AuditAnchor{Node: a.node, Seq: head.Seq, Hash: head.Hash, Time: time.Now().UTC()}
	if err := a.svc.SealAuditCheckpoint(ctx, &an); err != nil {
		return fmt.Errorf("audit: seal the trail's head: %w", err)
	}
	if head != a.anchored {
		if err := a.st.SetAuditAnchor(ctx, an); errors.Is(err, store.ErrStale) {
			return fmt.Errorf("audit: the store's anchor of node %q is ahead of this trail (seq %d): another node uses the same node id (set audit.node_id), or the database was edited: %w", a.node, head.Seq, err)
		} else if err != nil {
			return fmt.Errorf("audit: record the trail's anchor: %w", err)
		}
		a.anchored = head
	}
	if checkpoint || head.Seq >= a.cp.Seq+a.cpLines || (head != a.cp && time.Since(a.cpAt) >= a.cpEvery) {
		c := audit.Checkpoint{Node: a.node, Seq: an.Seq, Hash: an.Hash, Time: an.Time, MAC: hex.EncodeToString(an.MAC)}
		if err := audit.AppendCheckpoint(audit.CheckpointFile(a.path), c); err != nil {
			return err
		}
		a.cp, a.cpAt = head, time.Now()
		a.log.Info("audit chain head", "node", a.node, "seq", head.Seq, "hash", head.Hash, "checkpoint", true)
	}
	return nil
}

// run records the head after group commits (at most every anchorEvery)
// and checkpoints on time, until stop.
func (a *trailAnchor) run(ctx context.Context) {
	defer close(a.done)
	t := time.NewTicker(a.cpEvery)
	defer t.Stop()
	failing := false
	for {
		select {
		case <-a.quit:
			return
		case <-ctx.Done():
			return
		case <-a.sig:
		case <-t.C:
		}
		err := a.record(ctx, a.head(), false)
		switch {
		case err != nil && ctx.Err() == nil && !failing:
			// Once per outage: the store or the HSM is down, or the
			// anchor is ahead (see record).
			a.log.Error("audit: anchoring failed; retrying after every write until it works", "err", err)
			failing = true
		case err == nil && failing:
			a.log.Info("audit: anchoring works again", "node", a.node)
			failing = false
		}
		select { // coalesce: the commits of the next anchorEvery make one write
		case <-a.quit:
			return
		case <-time.After(anchorEvery):
		}
	}
}

// stop ends run and records a final checkpoint of the head.
func (a *trailAnchor) stop(ctx context.Context) {
	a.stopOnce.Do(func() {
		close(a.quit)
		<-a.done
		if err := a.record(ctx, a.head(), true); err != nil {
			a.log.Error("audit: final checkpoint failed", "err", err)
		}
	})
}

// deferredAudit holds the integrity failures found while kmsd starts, until
// the trail is known good: none is appended to a trail kmsd then refuses.
type deferredAudit struct {
	mu      sync.Mutex
	w       func(kms.IntegrityFailure)
	pending []kms.IntegrityFailure
}

func (d *deferredAudit) hook(f kms.IntegrityFailure) {
	d.mu.Lock()
	if d.w == nil {
		d.pending = append(d.pending, f)
		d.mu.Unlock()
		return
	}
	w := d.w
	d.mu.Unlock()
	w(f)
}

// open starts recording with w, the pending failures first.
func (d *deferredAudit) open(w func(kms.IntegrityFailure)) {
	d.mu.Lock()
	pending := d.pending
	d.pending, d.w = nil, w
	d.mu.Unlock()
	for _, f := range pending {
		w(f)
	}
}

// start checks the trail against its anchor and starts anchoring.
func (a *trailAnchor) start(ctx context.Context, svc *kms.Service) error {
	st, ok := svc.Store().(anchorStore)
	if !ok {
		return errors.New("audit: the store cannot keep the trail's anchor")
	}
	a.svc, a.st = svc, st
	if fi, err := os.Stat(a.path); err == nil && !fi.Mode().IsRegular() {
		// A device or a pipe (tests write to /dev/full): nothing to
		// anchor, and no checkpoint file beside it.
		a.log.Warn("audit: the trail is not a regular file; it is not anchored", "file", a.path)
		close(a.done)
		a.stopOnce.Do(func() {})
		return nil
	}
	if err := a.check(ctx); err != nil {
		return err
	}
	go a.run(ctx)
	return nil
}
