package audit

import (
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRotatedChainAndCheckpoints: a second file continues the first one's
// head (Options.Start); CheckTrail verifies both together, checks the
// checkpoints against their lines, and reports a trail that ends before
// its last checkpoint.
func TestRotatedChainAndCheckpoints(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "audit.log.1"), filepath.Join(dir, "audit.log")
	writeN(t, first, 30)
	w, _ := Open(first)
	seq, hash := w.Head()
	w.Close()
	var commits atomic.Int32
	w, err := OpenWith(second, Options{Start: Head{Seq: seq, Hash: hash}, OnCommit: func() { commits.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := w.Record(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	head := Head{}
	head.Seq, head.Hash = w.Head()
	w.Close()
	if head.Seq != 50 || commits.Load() == 0 {
		t.Fatalf("head %+v after %d commits", head, commits.Load())
	}
	atFirst := Checkpoint{Node: "n", Seq: seq, Hash: hash, Time: time.Now()}
	atEnd := Checkpoint{Node: "n", Seq: head.Seq, Hash: head.Hash, Time: time.Now()}

	rep, err := CheckTrail([]string{first, second}, []Checkpoint{atFirst, atEnd})
	if err != nil || len(rep.Problems) != 0 || rep.Lines != 50 || rep.Last != head {
		t.Fatalf("intact rotated trail: %+v %v", rep, err)
	}
	// The second file alone: its start is vouched for by a checkpoint.
	if rep, _ := CheckTrail([]string{second}, []Checkpoint{atFirst}); len(rep.Problems) != 0 {
		t.Fatalf("second file with the rotation checkpoint: %v", rep.Problems)
	}
	if rep, _ := CheckTrail([]string{second}, nil); len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "lines before it are missing") {
		t.Fatalf("second file without a checkpoint: %v", rep.Problems)
	}
	// Verify alone refuses a file that starts mid-chain.
	f, _ := os.Open(second)
	_, probs, _ := Verify(f)
	f.Close()
	if len(probs) == 0 {
		t.Fatal("Verify accepted a file starting mid-chain")
	}

	// Cut the last 3 lines: the end checkpoint finds it.
	b, _ := os.ReadFile(second)
	ls := strings.SplitAfter(string(b), "\n")
	cut := filepath.Join(dir, "cut")
	os.WriteFile(cut, []byte(strings.Join(ls[:len(ls)-4], "")), 0o600)
	rep, _ = CheckTrail([]string{first, cut}, []Checkpoint{atEnd})
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "the trail was cut after seq 47") {
		t.Fatalf("cut trail: %v", rep.Problems)
	}
	// A checkpoint whose hash differs from its line: rewritten.
	bad := atFirst
	bad.Hash = strings.Repeat("a", 64)
	if rep, _ := CheckTrail([]string{first, second}, []Checkpoint{bad}); len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "does not match the checkpoint") {
		t.Fatalf("mismatching checkpoint: %v", rep.Problems)
	}
	// A line dropped at the junction of the files.
	b1, _ := os.ReadFile(first)
	l1 := strings.SplitAfter(string(b1), "\n")
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte(strings.Join(l1[:len(l1)-2], "")), 0o600)
	if rep, _ := CheckTrail([]string{short, second}, nil); len(rep.Problems) == 0 || !strings.Contains(rep.Problems[0], "does not continue the previous head") {
		t.Fatalf("line dropped between files: %v", rep.Problems)
	}

	// Checkpoint files round-trip.
	cpf := CheckpointFile(second)
	for _, c := range []Checkpoint{atFirst, atEnd} {
		if err := AppendCheckpoint(cpf, c); err != nil {
			t.Fatal(err)
		}
	}
	cps, err := ReadCheckpoints(cpf)
	if err != nil || len(cps) != 2 || cps[1].Seq != 50 || cps[1].Hash != head.Hash {
		t.Fatalf("checkpoints %+v %v", cps, err)
	}
	if h, ok, err := LineHash(second, 40); err != nil || !ok || len(h) != 64 {
		t.Fatalf("LineHash: %q %v %v", h, ok, err)
	}
}
