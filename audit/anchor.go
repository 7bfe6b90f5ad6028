package audit

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Head is a point of the chain: the sequence number and hash of a line
// (Seq 0 and an empty or all-zero Hash: before the first line).
type Head struct {
	Seq  uint64
	Hash string
}

// IsZero reports whether h is before the first line of a chain.
func (h Head) IsZero() bool { return h.Seq == 0 && (h.Hash == "" || h.Hash == zeroHash) }

// Checkpoint is a signed statement that the trail of Node reached Seq with
// Hash at Time. kmsd writes one every N lines or T seconds, at rotation and
// at shutdown, to the checkpoint file beside the trail (one JSON line
// each) and keeps the latest, its anchor, in the store; MAC is the hex
// HMAC-SHA-256 computed inside the HSM (only kmsd, which holds the token,
// can check it; kmsctl checks the chain against the seq and hash).
type Checkpoint struct {
	Node string    `json:"node"`
	Seq  uint64    `json:"seq"`
	Hash string    `json:"hash"`
	Time time.Time `json:"time"`
	MAC  string    `json:"mac"`
}

// CheckpointFile is where kmsd appends the checkpoints of the trail path.
func CheckpointFile(path string) string { return path + ".checkpoints" }

// AppendCheckpoint appends c to the checkpoint file at path (created mode
// 0600) and syncs it.
func AppendCheckpoint(path string, c Checkpoint) error {
	b, err := json.Marshal(c)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("audit: checkpoint: %w", err)
	}
	if _, err := f.Write(append(b, '\n')); err != nil {
		f.Close()
		return fmt.Errorf("audit: checkpoint: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("audit: checkpoint: %w", err)
	}
	return f.Close()
}

// ReadCheckpoints reads a checkpoint file; a missing file has none.
func ReadCheckpoints(path string) ([]Checkpoint, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Checkpoint
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		var c Checkpoint
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			return out, fmt.Errorf("audit: %s line %d: %v", path, n, err)
		}
		out = append(out, c)
	}
	return out, sc.Err()
}

// Report is what CheckTrail found.
type Report struct {
	Lines    int  // lines read, all files
	Last     Head // head of the last line read
	Problems []string
}

// CheckTrail verifies the files of one node's trail, oldest first (rotated
// files, then the current one): each file's chain, each file continuing the
// previous one's head, and every checkpoint against the line it names. A
// checkpoint past the last line means the trail was cut after the lines
// it has: reported with the checkpoint's seq and time. The first file may
// start mid-chain (its predecessors removed) only where a checkpoint vouches
// for the line before it. MACs are not checked here (they need the HSM).
func CheckTrail(files []string, checkpoints []Checkpoint) (Report, error) {
	var rep Report
	seen := map[uint64]string{}
	start := Head{}
	for i, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return rep, err
		}
		var fileStart Head
		if i == 0 {
			// Peek at the first line: a first file that continues an
			// older chain needs a checkpoint of its start.
			first, _ := firstHeader(f)
			if first.Seq > 1 {
				fileStart = Head{Seq: first.Seq - 1, Hash: first.Prev}
				vouched := false
				for _, c := range checkpoints {
					vouched = vouched || c.Seq == fileStart.Seq && c.Hash == fileStart.Hash
				}
				if !vouched {
					rep.Problems = append(rep.Problems, fmt.Sprintf("%s: starts at seq %d and no checkpoint names line %d: lines before it are missing", name, first.Seq, fileStart.Seq))
				}
			}
			if _, err := f.Seek(0, io.SeekStart); err != nil {
				f.Close()
				return rep, err
			}
		} else {
			fileStart = start
		}
		n, last, problems, err := VerifyFrom(f, fileStart, func(seq uint64, hash string) { seen[seq] = hash })
		f.Close()
		if err != nil {
			return rep, fmt.Errorf("%s: %w", name, err)
		}
		for _, p := range problems {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s line %d: %s", name, p.Line, p.Reason))
		}
		rep.Lines += n
		start, rep.Last = last, last
	}
	for _, c := range checkpoints {
		switch h, ok := seen[c.Seq]; {
		case c.Seq == 0:
		case c.Seq > rep.Last.Seq:
			rep.Problems = append(rep.Problems, fmt.Sprintf("the trail ends at seq %d but a checkpoint of %s says seq %d was written: the trail was cut after seq %d (or the file was replaced by an older copy)",
				rep.Last.Seq, c.Time.UTC().Format(time.RFC3339), c.Seq, rep.Last.Seq))
		case ok && h != c.Hash:
			rep.Problems = append(rep.Problems, fmt.Sprintf("line seq %d does not match the checkpoint of %s: the trail was rewritten", c.Seq, c.Time.UTC().Format(time.RFC3339)))
		}
	}
	return rep, nil
}

// firstHeader reads the chain fields of the first line of r.
func firstHeader(r io.Reader) (header, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	if !sc.Scan() {
		return header{}, io.EOF
	}
	var h header
	err := json.Unmarshal(sc.Bytes(), &h)
	return h, err
}

// LineHash returns the hash of the line with seq in the trail at path, or
// ok false if it has no such line.
func LineHash(path string, seq uint64) (hash string, ok bool, err error) {
	f, err := os.Open(path)
	if err != nil {
		return "", false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var h header
		if json.Unmarshal(sc.Bytes(), &h) == nil && h.Seq == seq {
			return h.Hash, true, nil
		}
	}
	return "", false, sc.Err()
}
