package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"hsmkms/audit"
	"hsmkms/store"
)

// Audit actions of the trail's own management.
const (
	auditNewSegment = "AuditNewSegment"
	auditRotated    = "AuditRotated"
)

// auditCmd is `kmsd audit`, the operator's commands on this node's trail,
// run with kmsd stopped on this host and the server's flags:
//
//	kmsd audit rotate [server flags]
//	kmsd audit new-segment -reason TEXT [server flags]
//
// rotate checks the trail against its anchor, writes a checkpoint of its
// head, moves it to FILE.SEQ (SEQ: its last line, 12 digits) and starts a
// new file whose chain continues that head; its first line records the
// rotation. new-segment is for a trail kmsd refuses (cut, replaced,
// rewritten): it moves the file to FILE.incident-TIME for the
// investigation and starts a new file continuing the store's anchor; its
// first line (action AuditNewSegment, code AuditTrailIncident) records the
// reason. Both update the anchor and the checkpoint file.
func auditCmd(ctx context.Context, args []string, env func(string) (string, bool), stdout, stderr io.Writer) error {
	const usage = "usage: kmsd audit rotate | new-segment -reason TEXT [server flags]"
	if len(args) == 0 || (args[0] != "rotate" && args[0] != "new-segment") {
		return errors.New(usage)
	}
	verb := args[0]
	fs := flag.NewFlagSet("kmsd audit "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	finish, err := configFlags(fs, args[1:], env)
	if err != nil {
		return err
	}
	reason := fs.String("reason", "", "new-segment: why the trail is restarted (recorded in its first line)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	cfg, err := finish()
	if err != nil {
		return err
	}
	if cfg.auditFile == "" {
		return errors.New("the audit trail is disabled")
	}
	if verb == "new-segment" && (*reason == "" || len(*reason) > 200) {
		return errors.New("new-segment needs -reason TEXT (at most 200 bytes): it is recorded in the new segment's first line")
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	deferred := &deferredAudit{}
	svc, _, _, closeAll, err := openService(ctx, cfg, log, nil, deferred.hook)
	if err != nil {
		return err
	}
	defer closeAll()
	trail := newTrailAnchor(cfg, log)
	st, ok := svc.Store().(anchorStore)
	if !ok {
		return errors.New("audit: the store cannot keep the trail's anchor")
	}
	trail.svc, trail.st = svc, st

	var start audit.Head
	var moved string
	stamp := time.Now().UTC()
	switch verb {
	case "rotate":
		old, err := audit.Open(cfg.auditFile)
		if err != nil {
			return err
		}
		trail.w = old
		err = trail.check(ctx)
		start = trail.head()
		if err == nil {
			err = trail.record(ctx, start, true)
		}
		old.Close()
		if err != nil {
			return err
		}
		moved = fmt.Sprintf("%s.%012d", cfg.auditFile, start.Seq)
	case "new-segment":
		a, err := st.AuditAnchor(ctx, cfg.nodeID)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return err
		default:
			start = audit.Head{Seq: a.Seq, Hash: a.Hash}
			if err := svc.CheckAuditCheckpoint(ctx, a); err != nil {
				fmt.Fprintf(stderr, "kmsd: the store's anchor failed its integrity check (%v); the new segment continues its seq regardless\n", err)
			}
		}
		moved = cfg.auditFile + ".incident-" + stamp.Format("20060102T150405Z")
	}
	if _, err := os.Stat(cfg.auditFile); err == nil {
		if _, err := os.Stat(moved); err == nil {
			return fmt.Errorf("%s exists already", moved)
		}
		if err := os.Rename(cfg.auditFile, moved); err != nil {
			return err
		}
	} else {
		moved = ""
	}
	w, err := audit.OpenWith(cfg.auditFile, audit.Options{Start: start})
	if err != nil {
		return err
	}
	defer w.Close()
	trail.w = w
	// The checkpoint of the head the new file continues vouches for its
	// first line's prev; then the first line; then the new head.
	if verb == "new-segment" {
		if err := trail.record(ctx, start, true); err != nil {
			return err
		}
	}
	e := audit.Event{Time: stamp, Source: "kmsd", Protocol: "local", Code: "0", RequestID: "audit/rotate/" + moved}
	if verb == "new-segment" {
		e.Action, e.Code, e.RequestID = auditNewSegment, "AuditTrailIncident", "audit/new-segment: "+*reason
	} else {
		e.Action = auditRotated
	}
	if err := w.Record(e); err != nil {
		return err
	}
	if err := trail.record(ctx, trail.head(), true); err != nil {
		return err
	}
	deferred.open(integrityAudit(w, log))
	if moved != "" {
		fmt.Fprintf(stdout, "kmsd: %s moved to %s\n", cfg.auditFile, moved)
	}
	fmt.Fprintf(stdout, "kmsd: %s continues the chain at seq %d (%s); its first line records the %s\n", cfg.auditFile, start.Seq+1, start.Hash, verb)
	return nil
}
