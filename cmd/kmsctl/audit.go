package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"hsmkms/audit"
)

// auditCmd is `kmsctl audit verify [-checkpoints FILE] FILE...`: it checks
// an audit trail offline, its files oldest first (rotated files, then the
// current one), and reports every line that was edited, deleted or moved,
// a file that does not continue the previous one, and, against the
// checkpoints kmsd signed (by default the checkpoint file beside the last
// FILE), a line that does not match its checkpoint or a trail cut after
// its last checkpoint. It exits non-zero if it finds anything. The
// checkpoints' MACs are not checked: they need the HSM (kmsd checks them at
// start-up).
func auditCmd(args []string, stdout, stderr io.Writer) error {
	const usage = "usage: kmsctl audit verify [-checkpoints FILE] FILE..."
	if len(args) == 0 || args[0] != "verify" {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet("kmsctl audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cpFile := fs.String("checkpoints", "", "checkpoint file (default: LAST_FILE.checkpoints if it exists; \"none\" to skip)")
	anchor := fs.String("anchor", "", "the store's anchor of the trail, SEQ:HASH (SELECT seq, hash FROM audit_anchors WHERE node = ...)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	files := fs.Args()
	if len(files) == 0 {
		return errors.New(usage)
	}
	if *cpFile == "" {
		*cpFile = audit.CheckpointFile(files[len(files)-1])
	}
	var cps []audit.Checkpoint
	if *cpFile != "none" {
		var err error
		if cps, err = audit.ReadCheckpoints(*cpFile); err != nil {
			return fmt.Errorf("audit verify: %w", err)
		}
		if _, err := os.Stat(*cpFile); err == nil {
			fmt.Fprintf(stdout, "%s: %d checkpoints\n", *cpFile, len(cps))
		}
	}
	if *anchor != "" {
		seq, hash, ok := strings.Cut(*anchor, ":")
		n, err := strconv.ParseUint(seq, 10, 64)
		if !ok || err != nil || len(hash) != 64 {
			return errors.New("audit verify: -anchor wants SEQ:HASH (a 64-digit hex hash)")
		}
		cps = append(cps, audit.Checkpoint{Node: "anchor", Seq: n, Hash: hash})
	}
	rep, err := audit.CheckTrail(files, cps)
	if err != nil {
		return fmt.Errorf("audit verify: %w", err)
	}
	for _, p := range rep.Problems {
		fmt.Fprintln(stdout, p)
	}
	name := files[len(files)-1]
	if len(files) > 1 {
		name = fmt.Sprintf("%d files", len(files))
	}
	if len(rep.Problems) > 0 {
		return fmt.Errorf("audit verify: %s: %d problem(s) in %d lines: the trail was altered", name, len(rep.Problems), rep.Lines)
	}
	fmt.Fprintf(stdout, "%s: %d lines, hash chain intact, last seq %d\n", name, rep.Lines, rep.Last.Seq)
	return nil
}
