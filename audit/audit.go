// Package audit keeps kmsd's audit trail: one JSON line per API request,
// hash-chained so that an edit, a deletion or a reordering of lines is
// detected by Verify (kmsctl audit verify FILE). kmsd writes it; kmsctl
// verifies it, which is why it is a package of its own.
//
// # Line format
//
// Each line is a JSON object whose fields are, in order: seq (1, 2, 3...),
// time (RFC 3339, UTC, nanoseconds), requestId, secretId, source, protocol,
// action, keyId, keyVersion, code, latencyUs, prev, hash. prev is the hash
// of the previous line (64 zeros for the first line of a file); hash is the
// hex SHA-256 of the line's bytes up to, but excluding, the `,"hash":`
// member. A line never holds plaintext, ciphertext, data keys, PINs or
// SecretKeys: the Event type has no field for them.
//
// The chain proves the order and integrity of the lines relative to each
// other. It holds no secret, so someone able to rewrite the whole file can
// recompute it; kmsd therefore logs the chain head (seq and hash) to its
// operational log every minute and at shutdown, an anchor to compare
// against. Truncation of the last lines is detected only against such an
// anchor.
//
// # Failure
//
// Writer.Write returns only once the line is written to the file (one
// write(2) per batch of concurrent requests, "group commit"), or with an
// error; the caller then fails the request rather than serve it unrecorded.
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
}

// ErrClosed is returned by Write after Close.
var ErrClosed = errors.New("audit: closed")

const zeroHash = "0000000000000000000000000000000000000000000000000000000000000000"

type pending struct {
	e    Event
	done chan error // buffered (1); answered once per Write
}

// pendingPool recycles the pendings of completed writes (a pending given up
// on, after its context ended, may still be answered, so it is dropped).
var pendingPool sync.Pool

// Writer appends chained lines to a file. It is safe for concurrent use.
type Writer struct {
	f    *os.File
	ch   chan *pending
	quit chan struct{}
	wg   sync.WaitGroup

	mu   sync.Mutex // guards seq, prev and size; held by the writer goroutine
	seq  uint64
	prev string
	size int64
}

// Open opens (or creates, mode 0600) the audit file at path and continues
// its chain. It refuses a file whose last line is not a well-formed audit
// line: the operator must look at it before kmsd writes more.
func Open(path string) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	w := &Writer{f: f, ch: make(chan *pending, 4096), quit: make(chan struct{}), prev: zeroHash}
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
	go w.loop()
	return w, nil
}

// Head returns the sequence number and hash of the last line written.
func (w *Writer) Head() (uint64, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq, w.prev
}

// Write records e and returns once its line is in the file. Errors: the
// file could not be written (the line is not recorded), ctx ended first,
// or ErrClosed.
func (w *Writer) Write(ctx context.Context, e Event) error {
	p, _ := pendingPool.Get().(*pending)
	if p == nil {
		p = &pending{done: make(chan error, 1)}
	}
	p.e = e
	select {
	case w.ch <- p:
	case <-w.quit:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("audit: %w", ctx.Err())
	}
	select {
	case err := <-p.done:
		// The writer is done with p and its channel is empty again.
		p.e = Event{}
		pendingPool.Put(p)
		return err
	case <-ctx.Done():
		// The line may still be written; the request fails anyway.
		return fmt.Errorf("audit: %w", ctx.Err())
	}
}

// WriteTimeout is Write with a timeout instead of a context: it records e
// and returns once its line is in the file, or with an error when the line
// could not be written, after d, or after Close. It saves the context and
// timer a caller would make per line.
func (w *Writer) WriteTimeout(e Event, d time.Duration) error {
	select {
	case <-w.quit:
		return ErrClosed
	default:
	}
	p, _ := pendingPool.Get().(*pending)
	if p == nil {
		p = &pending{done: make(chan error, 1)}
	}
	p.e = e
	t := getTimer(d)
	select {
	case w.ch <- p:
	case <-w.quit:
		putTimer(t)
		return ErrClosed
	case <-t.C:
		putTimer(t)
		return fmt.Errorf("audit: %w", context.DeadlineExceeded)
	}
	select {
	case err := <-p.done:
		putTimer(t)
		p.e = Event{}
		pendingPool.Put(p)
		return err
	case <-t.C:
		putTimer(t)
		// The line may still be written; the request fails anyway.
		return fmt.Errorf("audit: %w", context.DeadlineExceeded)
	}
}

var timers sync.Pool

func getTimer(d time.Duration) *time.Timer {
	if t, ok := timers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

// putTimer stops t and pools it. Since Go 1.23 a stopped timer delivers no
// stale value, so it can be Reset and reused.
func putTimer(t *time.Timer) {
	t.Stop()
	timers.Put(t)
}

// Close stops the writer after the lines already queued are written.
func (w *Writer) Close() error {
	select {
	case <-w.quit:
		return nil
	default:
	}
	close(w.quit)
	w.wg.Wait()
	return w.f.Close()
}

func (w *Writer) loop() {
	defer w.wg.Done()
	batch := make([]*pending, 0, 256)
	var buf []byte
	for {
		var first *pending
		select {
		case first = <-w.ch:
		case <-w.quit:
			// Drain what was queued before Close.
			for {
				select {
				case p := <-w.ch:
					w.commit([]*pending{p}, &buf)
				default:
					return
				}
			}
		}
		batch = append(batch[:0], first)
	drain:
		for len(batch) < cap(batch) {
			select {
			case p := <-w.ch:
				batch = append(batch, p)
			default:
				break drain
			}
		}
		w.commit(batch, &buf)
	}
}

// commit writes a batch of lines with one write(2) and answers each
// waiting request. On failure it restores the file to its previous size and
// the chain to its previous head, so the next batch continues a valid chain.
func (w *Writer) commit(batch []*pending, buf *[]byte) {
	w.mu.Lock()
	seq, prev, size := w.seq, w.prev, w.size
	b := (*buf)[:0]
	for _, p := range batch {
		seq++
		var h string
		b, h = appendLine(b, seq, prev, p.e)
		prev = h
	}
	n, err := w.f.Write(b)
	if err == nil {
		w.seq, w.prev, w.size = seq, prev, size+int64(n)
	} else if n > 0 {
		// Best effort: cut the partial batch off so the chain stays valid.
		_ = w.f.Truncate(size)
	}
	w.mu.Unlock()
	*buf = b
	if err != nil {
		err = fmt.Errorf("audit: write: %w", err)
	}
	for _, p := range batch {
		p.done <- err
	}
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
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	prevHash, prevSeq := zeroHash, uint64(0)
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
		switch {
		case first && (h.Seq != 1 || h.Prev != zeroHash):
			problems = append(problems, Problem{lines, fmt.Sprintf("the trail starts at seq %d, not at the start of a chain: lines deleted from the start", h.Seq)})
		case !first && h.Seq != prevSeq+1:
			problems = append(problems, Problem{lines, fmt.Sprintf("seq %d follows %d: lines deleted or reordered", h.Seq, prevSeq)})
		case !first && h.Prev != prevHash:
			problems = append(problems, Problem{lines, "prev does not match the hash of the line before: a line was deleted, reordered or edited"})
		}
		prevHash, prevSeq, first = h.Hash, h.Seq, false
	}
	return lines, problems, sc.Err()
}

func sha256Sum(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
