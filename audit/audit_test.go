package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func event(i int) Event {
	return Event{Time: time.Unix(1795881600, int64(i)), RequestID: fmt.Sprintf("req-%d", i), SecretID: "AKIDx", Source: "127.0.0.1:1",
		Protocol: "api3", Action: "Encrypt", KeyID: "k", KeyVersion: 1, Code: "0", Latency: time.Duration(i) * time.Microsecond}
}

func writeN(t *testing.T, path string, n int) {
	t.Helper()
	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- w.Write(context.Background(), event(i))
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func verifyFile(t *testing.T, path string) (int, []Problem) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	n, probs, err := Verify(f)
	if err != nil {
		t.Fatal(err)
	}
	return n, probs
}

func TestChainAcrossRestartsVerifies(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeN(t, path, 200)
	writeN(t, path, 50) // reopen continues the chain
	n, probs := verifyFile(t, path)
	if n != 250 || len(probs) != 0 {
		t.Fatalf("%d lines, problems %+v", n, probs)
	}
	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if seq, h := w.Head(); seq != 250 || len(h) != 64 {
		t.Fatalf("head %d %s", seq, h)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode())
	}
}

func TestTamperingDetected(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeN(t, path, 10)
	orig, _ := os.ReadFile(path)
	lines := strings.SplitAfter(strings.TrimSuffix(string(orig), "\n"), "\n")
	tests := []struct {
		name   string
		mutate func(l []string) []string
		line   int
	}{
		{"edited field", func(l []string) []string { l[4] = strings.Replace(l[4], `"code":"0"`, `"code":"1"`, 1); return l }, 5},
		{"edited last line", func(l []string) []string {
			l[9] = strings.Replace(l[9], `"action":"Encrypt"`, `"action":"Decrypt"`, 1)
			return l
		}, 10},
		{"deleted line", func(l []string) []string { return append(l[:3], l[4:]...) }, 4},
		{"swapped lines", func(l []string) []string { l[2], l[3] = l[3], l[2]; return l }, 3},
		{"deleted first line", func(l []string) []string { return l[1:] }, 1},
		{"recomputed edit", func(l []string) []string {
			// Edit a line and fix its own hash: the next line still points at the old hash.
			b := []byte(strings.TrimSuffix(l[5], "\n"))
			i := bytes.LastIndex(b, []byte(`,"hash":"`))
			body := strings.Replace(string(b[:i]), `"secretId":"AKIDx"`, `"secretId":"AKIDy"`, 1)
			l[5], _ = appendRaw(body)
			return l
		}, 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.mutate(append([]string(nil), lines...))
			p := filepath.Join(t.TempDir(), "a.log")
			content := strings.Join(l, "")
			if !strings.HasSuffix(content, "\n") {
				content += "\n"
			}
			os.WriteFile(p, []byte(content), 0o600)
			_, probs := verifyFile(t, p)
			if len(probs) == 0 || probs[0].Line != tt.line {
				t.Fatalf("problems %+v, want the first at line %d", probs, tt.line)
			}
		})
	}
}

// appendRaw re-hashes a line body, as an attacker without an anchor could.
func appendRaw(body string) (string, string) {
	sum := sha256Sum([]byte(body))
	return body + `,"hash":"` + sum + "\"}\n", sum
}

func TestWriteFailureIsReported(t *testing.T) {
	w, err := Open("/dev/full")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := w.Write(context.Background(), event(1)); err == nil {
		t.Fatal("a write to a full device succeeded")
	}
}

func TestOpenRefusesACorruptTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	writeN(t, path, 3)
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"seq":4,"garbage"` + "\n")
	f.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("opened a trail whose last line is corrupt")
	}
}

func TestNoSecretFields(t *testing.T) {
	// The line format is fixed by appendLine; check it holds only the
	// documented members.
	b, _ := appendLine(nil, 1, zeroHash, event(1))
	for _, want := range []string{`"seq":1`, `"requestId":"req-1"`, `"secretId":"AKIDx"`, `"source":`, `"protocol":"api3"`, `"action":"Encrypt"`, `"keyId":"k"`, `"keyVersion":1`, `"code":"0"`, `"latencyUs":1`, `"prev":"` + zeroHash, `"hash":"`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("line lacks %s: %s", want, b)
		}
	}
}

func TestSummaryLineCount(t *testing.T) {
	b, _ := appendLine(nil, 1, zeroHash, event(1))
	if bytes.Contains(b, []byte(`"count"`)) {
		t.Fatalf("a line of one request has a count: %s", b)
	}
	e := event(2)
	e.Count = 37
	b, _ = appendLine(nil, 1, zeroHash, e)
	if !bytes.Contains(b, []byte(`"latencyUs":2,"count":37,"prev":"`)) {
		t.Fatalf("summary line: %s", b)
	}
	if _, err := parseLine(bytes.TrimSuffix(b, []byte("\n"))); err != nil {
		t.Fatalf("summary line does not verify: %v", err)
	}
}

func TestAppendStringMatchesMarshal(t *testing.T) {
	for _, s := range []string{"", "abc", "a\"b", "a\\b", "<&>", "\x00\x1f\x7f", "é", "\xff", "\u2028", "AKID/2019-02-25", "127.0.0.1:5555"} {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
	buf := make([]byte, 0, 64)
	if n := testing.AllocsPerRun(100, func() { buf = appendString(buf[:0], "plain-ascii-value") }); n != 0 {
		t.Fatalf("appendString of plain ASCII: %.0f allocations", n)
	}
}

func TestRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	// Sequential (each leads its own write) and concurrent (groups).
	for i := range 3 {
		if err := w.Record(event(i)); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.Record(event(3 + i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if seq, _ := w.Head(); seq != 203 {
		t.Fatalf("head at seq %d, want 203", seq)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Record(Event{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	n, problems := verifyFile(t, path)
	if n != 203 || len(problems) != 0 {
		t.Fatalf("Verify: %d lines, %v", n, problems)
	}
}

// A stuck file system: the trail is a FIFO nobody reads, so write(2)
// blocks once the pipe is full. Every request then fails with ErrTimeout
// within about the Writer's timeout instead of waiting for ever, except
// the one whose goroutine is itself in the stuck write(2) (a request that
// found no write in progress writes its own line), which waits for it.
// Once the pipe is drained the trail resumes and its chain is intact.
func TestStuckWriteTimesOut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	const timeout = 200 * time.Millisecond
	w, err := OpenTimeout(path, timeout)
	if err != nil {
		t.Fatal(err)
	}
	// Fill the pipe (64 KiB on Linux; lines are about 400 bytes).
	const n = 1000
	results := make(chan error, n+1)
	for i := range n {
		go func() { results <- w.Record(event(i)) }()
	}
	var ok, timedOut int
	deadline := time.After(20 * timeout)
collect:
	for ok+timedOut < n {
		select {
		case err := <-results:
			switch {
			case err == nil:
				ok++
			case errors.Is(err, ErrTimeout):
				timedOut++
			default:
				t.Fatalf("unexpected error: %v", err)
			}
		case <-deadline:
			break collect
		}
	}
	if pending := n - ok - timedOut; pending > 1 {
		t.Fatalf("%d requests still waiting after %v with a %v timeout", pending, 20*timeout, timeout)
	}
	if timedOut == 0 || ok == 0 {
		t.Fatalf("%d written, %d timed out; want both (the pipe holds some lines, not all)", ok, timedOut)
	}
	// A request now, with the write still stuck, fails too.
	if err := w.Record(event(n)); !errors.Is(err, ErrTimeout) {
		t.Fatalf("a request while the write is stuck: %v, want ErrTimeout", err)
	}
	// Drain the pipe: the stuck write completes, and new lines go through.
	r, err := os.OpenFile(path, os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	var drained bytes.Buffer
	readDone := make(chan error, 1)
	go func() { _, err := drained.ReadFrom(r); readDone <- err }()
	if pending := n - ok - timedOut; pending == 1 {
		if err := <-results; err != nil && !errors.Is(err, ErrTimeout) {
			t.Fatalf("the request in the stuck write: %v", err)
		} else if err == nil {
			ok++
		}
	}
	if err := w.Record(event(n + 1)); err != nil {
		t.Fatalf("a request after the pipe drained: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-readDone; err != nil { // EOF: the Writer's end is closed
		t.Fatal(err)
	}
	r.Close()
	lines, problems, err := Verify(&drained)
	if err != nil || len(problems) != 0 {
		t.Fatalf("Verify of what went through the pipe: %d lines, %v, %v", lines, problems, err)
	}
	if lines < ok+1 {
		t.Fatalf("%d lines went through, want at least the %d acknowledged ones (%d timed out, head %v)", lines, ok+1, timedOut, fmt.Sprint(w.Head()))
	}
}

// Close writes the lines already queued before it returns.
func TestCloseWritesQueuedLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var acked sync.WaitGroup
	acked.Add(50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.Record(event(i))
			if err == nil {
				acked.Done()
			} else if !errors.Is(err, ErrClosed) {
				t.Error(err)
				acked.Done()
			} else {
				acked.Done()
			}
		}()
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	seq, _ := w.Head()
	n, problems := verifyFile(t, path)
	if uint64(n) != seq || len(problems) != 0 {
		t.Fatalf("file has %d lines (%v), head says %d", n, problems, seq)
	}
}
