// Package audit keeps kmsd's audit trail: one JSON line per API request,
// hash-chained so that an edit, a deletion or a reordering of lines is
// detected by Verify (kmsctl audit verify FILE). kmsd writes it; kmsctl
// verifies it, which is why it is a package of its own.
//
// # Line format
//
// Each line is a JSON object whose fields are, in order: seq (1, 2, 3...),
// time (RFC 3339, UTC, nanoseconds), requestId, secretId, source, protocol,
// action, keyId, keyVersion, code, latencyUs, count (summary lines only),
// prev, hash. A summary line (count present) stands for count refused
// requests or connections of one kind from one source. prev is the hash
// of the previous line (64 zeros for the first line of a file); hash is the
// hex SHA-256 of the line's bytes up to, but excluding, the `,"hash":`
// member. A line never holds plaintext, ciphertext, data keys, PINs or
// SecretKeys: the Event type has no field for them.
//
// The chain proves the order and integrity of the lines relative to each
// other. It holds no secret, so someone able to rewrite the whole file can
// recompute it, and cutting the last lines leaves a valid chain: kmsd
// therefore keeps the head in its store as an anchor and writes signed
// checkpoints (anchor.go; cmd/kmsd/anchor.go), against which CheckTrail and
// kmsd's start-up find a cut or rewritten trail. A rotated file's chain
// continues the previous file's head (Options.Start).
//
// # Failure
//
// Writer.Record and Writer.Write return only once the line is written to
// the file (one write(2) per group of concurrent requests, "group
// commit"), or with an error; the caller then fails the request rather
// than serve it unrecorded. If the file system stops answering, every
// request fails with ErrTimeout within the Writer's timeout, except the
// one whose goroutine is itself in the stuck write(2), which waits for it
// (a write to a regular file cannot be interrupted).
package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
)

// Event is what one line records about one request.
type Event struct {
	Time       time.Time
	RequestID  string
	SecretID   string
	Source     string // remote address
	Protocol   string // "api3" or "legacy"
	Action     string
	KeyID      string
	KeyVersion uint32
	Code       string // "0" or the error code
	Latency    time.Duration
	// Count, when not 0, makes the line a summary: it stands for Count
	// refused requests or connections of one kind from one source, the
	// first of them at Time (see httpapi's refusal summaries). A line of
	// one request leaves it 0, and the line then has no count member.
	Count uint64
}

// ErrClosed is returned by Write and Record after Close.
var ErrClosed = errors.New("audit: closed")

// ErrTimeout is returned by Record when its line was not written within
// the Writer's timeout (the file system is stuck); the line may still be
// written later.
var ErrTimeout = errors.New("audit: the trail was not written in time")

// DefaultTimeout is how long Record waits for a line with Open.
const DefaultTimeout = 5 * time.Second

const zeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

// group is the lines of one write(2): the requests that queued while the
// previous write was in progress.
type group struct {
	events  []Event
	created time.Time     // when its first line queued
	done    chan struct{} // closed once err is final
	err     error         // written under Writer.mu before done is closed
	ended   bool          // done is closed (under Writer.mu)
}

// Writer appends chained lines to a file. It is safe for concurrent use.
//
// Group commit without a writer goroutine: a request that finds no write in
// progress writes its own line at once; requests that arrive during a write
// queue their lines into the next group and wait. Whoever finishes a write
// with a group queued starts a goroutine that writes the queued groups one
// after the other until none is left. A watchdog fails every group whose
// first line has waited longer than the timeout, so no request waits on a
// stuck file system for longer, and no request needs a timer of its own.
type Writer struct {
	f       *os.File
	timeout time.Duration

	mu      sync.Mutex
	idle    sync.Cond // signalled when a flush ends
	cur     *group    // lines queued for the next write; nil when none
	writing *group    // the group being written; nil when no write is in progress
	closed  bool
	seq     uint64 // the chain head: the last line written
	prev    string
	size    int64
	spare   []Event // a drained events slice, for the next group

	buf  []byte // the flusher's (only one at a time: writing != nil)
	quit chan struct{}
	wg   sync.WaitGroup

	onCommit func() // Options.OnCommit
}

// Options tunes OpenWith. The zero value is Open's behaviour.
type Options struct {
	// Timeout is the longest Record waits for its line; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// Start, used only when the file is empty or new, is the head the
	// chain continues from: the first line gets seq Start.Seq+1 and prev
	// Start.Hash. A rotated file continues the previous file's head; the
	// zero Head starts a new chain.
	Start Head
	// OnCommit, if set, is called after every successful write(2) of a
	// group of lines, without locks held, by the goroutine that wrote it:
	// it must not block (kmsd signals its anchoring loop).
	OnCommit func()
}

// Open opens (or creates, mode 0600) the audit file at path and continues
// its chain; Record waits at most DefaultTimeout for a line. It refuses a
// file whose last line is not a well-formed audit line: the operator must
// look at it before kmsd writes more.
func Open(path string) (*Writer, error) { return OpenTimeout(path, DefaultTimeout) }

// OpenTimeout is Open with the time Record waits for a line at most.
func OpenTimeout(path string, timeout time.Duration) (*Writer, error) {
	return OpenWith(path, Options{Timeout: timeout})
}

// OpenWith is Open with options.
func OpenWith(path string, o Options) (*Writer, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Start.Hash == "" {
		o.Start.Hash = zeroHash
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	w := &Writer{f: f, timeout: o.Timeout, quit: make(chan struct{}), seq: o.Start.Seq, prev: o.Start.Hash, onCommit: o.OnCommit}
	w.idle.L = &w.mu
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		w.size = st.Size()
		if w.size > 0 {
			last, err := lastLine(f, w.size)
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("audit: %s: %w", path, err)
			}
			h, err := parseLine(last)
			if err != nil {
				f.Close()
				return nil, fmt.Errorf("audit: %s: the last line is not a valid audit line (%v); move the file aside after inspecting it", path, err)
			}
			w.seq, w.prev = h.Seq, h.Hash
		}
	}
	w.wg.Add(1)
	go w.watch()
	return w, nil
}

// Head returns the sequence number and hash of the last line written.
func (w *Writer) Head() (uint64, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq, w.prev
}

// Record records e and returns once its line is in the file. Errors: the
// file could not be written (the line is not recorded), ErrTimeout (the
// line was not written within the Writer's timeout; it may still be), or
// ErrClosed. It needs no context and arms no timer: the Writer's watchdog
// bounds the wait.
func (w *Writer) Record(e Event) error {
	g, lead, err := w.enqueue(e)
	if err != nil {
		return err
	}
	if lead {
		w.flush(g, true)
	}
	<-g.done
	return g.err
}

// Write is Record with a context: it also returns (with ctx.Err) when ctx
// ends first; the line may then still be written.
func (w *Writer) Write(ctx context.Context, e Event) error {
	g, lead, err := w.enqueue(e)
	if err != nil {
		return err
	}
	if lead {
		w.flush(g, true)
	}
	select {
	case <-g.done:
		return g.err
	case <-ctx.Done():
		return fmt.Errorf("audit: %w", ctx.Err())
	}
}

// enqueue adds e to the next group. lead means no write was in progress:
// the caller must flush g itself.
func (w *Writer) enqueue(e Event) (g *group, lead bool, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, false, ErrClosed
	}
	g = w.cur
	if g == nil {
		g = &group{events: w.spare[:0], done: make(chan struct{})}
		w.spare = nil
		w.cur = g
		// created is only read by the watchdog, which matters for a
		// group that has waited; the clock is read once per group.
		g.created = time.Now()
	}
	g.events = append(g.events, e)
	if w.writing == nil {
		w.writing, w.cur = g, nil
		return g, true, nil
	}
	return g, false, nil
}

// flush writes g, which the caller took as w.writing, then every group
// queued meanwhile. A request flushing its own group (inline) writes only
// that one and leaves the rest to a new goroutine, so that it can answer.
func (w *Writer) flush(g *group, inline bool) {
	for {
		w.commit(g)
		w.mu.Lock()
		next := w.cur
		if next == nil {
			w.writing = nil
			w.idle.Broadcast()
			w.mu.Unlock()
			return
		}
		w.writing, w.cur = next, nil
		w.mu.Unlock()
		if inline {
			go w.flush(next, false)
			return
		}
		g = next
	}
}

// commit writes a group's lines with one write(2) and ends the group. On
// failure it restores the file to its previous size and the chain to its
// previous head, so the next group continues a valid chain.
func (w *Writer) commit(g *group) {
	w.mu.Lock()
	seq, prev, size := w.seq, w.prev, w.size
	w.mu.Unlock()
	b := w.buf[:0]
	for _, e := range g.events {
		seq++
		var h string
		b, h = appendLine(b, seq, prev, e)
		prev = h
	}
	n, err := w.f.Write(b)
	if err != nil && n > 0 {
		// Best effort: cut the partial group off so the chain stays valid.
		_ = w.f.Truncate(size)
	}
	w.buf = b
	if err != nil {
		err = fmt.Errorf("audit: write: %w", err)
	}
	w.mu.Lock()
	if err == nil {
		w.seq, w.prev, w.size = seq, prev, size+int64(n)
	}
	w.end(g, err)
	clear(g.events) // drop the strings; the slice serves a later group
	w.spare = g.events[:0]
	g.events = nil
	w.mu.Unlock()
	if err == nil && w.onCommit != nil {
		w.onCommit()
	}
}

// end gives g its result unless the watchdog did first. w.mu is held.
func (w *Writer) end(g *group, err error) {
	if g.ended {
		return
	}
	g.err, g.ended = err, true
	close(g.done)
}

// watch fails the groups that have waited longer than the timeout: the one
// being written (its write is stuck) and the queued one, which is then
// dropped so its lines are never written for requests already refused.
func (w *Writer) watch() {
	defer w.wg.Done()
	tick := max(w.timeout/20, time.Millisecond)
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-t.C:
		}
		w.mu.Lock()
		now := time.Now()
		if g := w.writing; g != nil && !g.ended && now.Sub(g.created) > w.timeout {
			w.end(g, ErrTimeout)
		}
		if g := w.cur; g != nil && now.Sub(g.created) > w.timeout {
			w.end(g, ErrTimeout)
			w.cur = nil
		}
		w.mu.Unlock()
	}
}

// Close stops the writer after the lines already queued are written (it
// waits for a write in progress, however long it takes).
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	for w.writing != nil {
		w.idle.Wait()
	}
	w.mu.Unlock()
	close(w.quit)
	w.wg.Wait()
	return w.f.Close()
}

// appendLine appends one line (with its newline) and returns its hash.
func appendLine(b []byte, seq uint64, prev string, e Event) ([]byte, string) {
	start := len(b)
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, seq, 10)
	b = append(b, `,"time":`...)
	b = append(b, '"')
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano) // no character needs escaping
	b = append(b, '"')
	b = append(b, `,"requestId":`...)
	b = appendString(b, e.RequestID)
	b = append(b, `,"secretId":`...)
	b = appendString(b, e.SecretID)
	b = append(b, `,"source":`...)
	b = appendString(b, e.Source)
	b = append(b, `,"protocol":`...)
	b = appendString(b, e.Protocol)
	b = append(b, `,"action":`...)
	b = appendString(b, e.Action)
	b = append(b, `,"keyId":`...)
	b = appendString(b, e.KeyID)
	b = append(b, `,"keyVersion":`...)
	b = strconv.AppendUint(b, uint64(e.KeyVersion), 10)
	b = append(b, `,"code":`...)
	b = appendString(b, e.Code)
	b = append(b, `,"latencyUs":`...)
	b = strconv.AppendInt(b, e.Latency.Microseconds(), 10)
	if e.Count > 0 {
		b = append(b, `,"count":`...)
		b = strconv.AppendUint(b, e.Count, 10)
	}
	b = append(b, `,"prev":"`...)
	b = append(b, prev...)
	b = append(b, '"')
	sum := sha256.Sum256(b[start:])
	b = append(b, `,"hash":"`...)
	hs := len(b)
	b = hex.AppendEncode(b, sum[:])
	h := string(b[hs:])
	b = append(b, "\"}\n"...)
	return b, h
}

// appendString appends s as a JSON string, as json.Marshal renders it.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		// Printable ASCII that json.Marshal copies as is; anything else
		// (escapes, HTML characters, non-ASCII) takes json.Marshal.
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // cannot fail for a string
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// header is what Verify and Open need from a line.
type header struct {
	Seq  uint64 `json:"seq"`
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// parseLine checks one line's own hash and returns its chain fields.
func parseLine(line []byte) (header, error) {
	var h header
	i := bytes.LastIndex(line, []byte(`,"hash":"`))
	if i < 0 || !bytes.HasSuffix(line, []byte(`"}`)) {
		return h, errors.New("no hash member at the end")
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return h, fmt.Errorf("not JSON: %v", err)
	}
	sum := sha256.Sum256(line[:i])
	if hex.EncodeToString(sum[:]) != h.Hash {
		return h, errors.New("the line's hash does not match its content")
	}
	return h, nil
}

// lastLine returns the last complete line of a file of the given size.
func lastLine(f *os.File, size int64) ([]byte, error) {
	const max = 64 << 10
	off := size - max
	if off < 0 {
		off = 0
	}
	b := make([]byte, size-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if !bytes.HasSuffix(b, []byte("\n")) {
		return nil, errors.New("the file does not end with a complete line")
	}
	b = b[:len(b)-1]
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[i+1:]
	} else if off > 0 {
		return nil, errors.New("last line too long")
	}
	return b, nil
}

// Problem is one integrity failure found by Verify.
type Problem struct {
	Line   int // 1-based
	Reason string
}

// Verify reads an audit trail and reports every line that breaks the chain:
// an edited line (its hash does not match), a deleted or reordered line (its
// seq or prev does not follow the line before it). It returns the number of
// lines read. An empty slice means the chain is intact.
func Verify(r io.Reader) (lines int, problems []Problem, err error) {
	lines, _, problems, err = VerifyFrom(r, Head{}, nil)
	return lines, problems, err
}

// VerifyFrom is Verify for a trail that continues the chain at start (the
// head of the previous file of a rotated trail; the zero Head for the first
// file). visit, if not nil, is called with every line whose own hash is
// right. last is the head of the last line read (start if none).
func VerifyFrom(r io.Reader, start Head, visit func(seq uint64, hash string)) (lines int, last Head, problems []Problem, err error) {
	if start.Hash == "" {
		start.Hash = zeroHash
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prevHash, prevSeq := start.Hash, start.Seq
	first := true
	for sc.Scan() {
		lines++
		h, perr := parseLine(sc.Bytes())
		if perr != nil {
			problems = append(problems, Problem{lines, perr.Error()})
			// Resynchronise on the line's own claims so one bad line is
			// reported once.
			prevHash, prevSeq, first = h.Hash, h.Seq, false
			continue
		}
		if visit != nil {
			visit(h.Seq, h.Hash)
		}
		switch {
		case first && start.Seq == 0 && (h.Seq != 1 || h.Prev != zeroHash):
			problems = append(problems, Problem{lines, fmt.Sprintf("the trail starts at seq %d, not at the start of a chain: lines deleted from the start", h.Seq)})
		case first && (h.Seq != start.Seq+1 || h.Prev != start.Hash):
			problems = append(problems, Problem{lines, fmt.Sprintf("the file starts at seq %d and does not continue the previous head (seq %d): lines deleted between the files", h.Seq, start.Seq)})
		case !first && h.Seq != prevSeq+1:
			problems = append(problems, Problem{lines, fmt.Sprintf("seq %d follows %d: lines deleted or reordered", h.Seq, prevSeq)})
		case !first && h.Prev != prevHash:
			problems = append(problems, Problem{lines, "prev does not match the hash of the line before: a line was deleted, reordered or edited"})
		}
		prevHash, prevSeq, first = h.Hash, h.Seq, false
	}
	return lines, Head{Seq: prevSeq, Hash: prevHash}, problems, sc.Err()
}

func sha256Sum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
