package main_test

// Someone who can write the audit file: lines cut from its end, removed
// from its middle, or the file replaced by an older copy are found at
// start-up (kmsd refuses to continue) and by kmsctl audit verify against
// the checkpoints kmsd signed; kmsd audit new-segment and rotate carry the
// chain on.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"hsmkms/audit"
)

func kmsctlVerify(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"audit", "verify"}, args...)...).CombinedOutput()
	return string(out), err
}

// refusedStart starts kmsd, expects it to exit before listening, and
// returns its output.
func refusedStart(t *testing.T, env []string) string {
	t.Helper()
	s, exited := launch(t, filepath.Join(binDir, "kmsd"), env)
	if exited == nil {
		s.stop()
		t.Fatal("kmsd started on a tampered audit trail")
	}
	return s.stderr.String()
}

// lines splits a trail into its lines, each with its newline.
func lines(b []byte) [][]byte {
	out := bytes.SplitAfter(b, []byte("\n"))
	if len(out) > 0 && len(out[len(out)-1]) == 0 {
		out = out[:len(out)-1]
	}
	return out
}

func TestAuditTrailIsAnchored(t *testing.T) {
	s, tok, data := newServer(t)
	env := kmsdEnv(tok, data)
	key := s.createKey("audited")
	for range 10 {
		s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("anchored")}})
	}
	s.stop()
	path := filepath.Join(data, "audit.log")
	older, _ := os.ReadFile(path)
	s = startKMSD(t, env)
	for range 10 {
		s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("anchored")}})
	}
	s.stop()
	full, _ := os.ReadFile(path)
	all := lines(full)
	if out, err := kmsctlVerify(t, path); err != nil || !strings.Contains(out, "hash chain intact") || !strings.Contains(out, "checkpoints") {
		t.Fatalf("verify of the intact trail: %v\n%s", err, out)
	}

	write := func(b []byte) {
		t.Helper()
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cut := bytes.Join(all[:len(all)-5], nil)
	rechained := rechain(t, append(append([][]byte{}, all[:8]...), all[9:]...))
	middle := bytes.Join(append(append([][]byte{}, all[:8]...), all[9:]...), nil)
	for _, c := range []struct {
		name, file string
		b          []byte
		start      string // in kmsd's refusal
		verify     string // in kmsctl's report
	}{
		{"lines dropped from the end", "cut", cut, "but the store's anchor says line", "the trail was cut after seq"},
		{"a line dropped from the middle", "middle", middle, "does not match its anchor or its checkpoints", "lines deleted or reordered"},
		{"replaced by an older copy", "older", older, "but the store's anchor says line", "the trail was cut after seq"},
		{"a line dropped from the middle and the chain recomputed", "rechained", rechained, "but the store's anchor says line", "does not match the checkpoint"},
	} {
		t.Run(c.name, func(t *testing.T) {
			write(c.b)
			out := refusedStart(t, env)
			if !strings.Contains(out, "kmsd will not continue this audit trail") || !strings.Contains(out, c.start) || !strings.Contains(out, "kmsd audit new-segment") {
				t.Fatalf("refusal does not explain itself:\n%s", out)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(after, c.b) {
				t.Fatal("kmsd wrote to a trail it refused")
			}
			vout, err := kmsctlVerify(t, "-checkpoints", audit0(path), path)
			if err == nil || !strings.Contains(vout, c.verify) {
				t.Fatalf("kmsctl audit verify: %v\n%s", err, vout)
			}
			// Given only the store's anchor, kmsctl finds it too.
			last := lines(full)[len(all)-1]
			var head struct {
				Seq  uint64
				Hash string
			}
			json.Unmarshal(last, &head)
			vout, err = kmsctlVerify(t, "-checkpoints", "none", "-anchor", fmt.Sprintf("%d:%s", head.Seq, head.Hash), path)
			if err == nil || !strings.Contains(vout, "the trail was cut after seq") && !strings.Contains(vout, "does not match the checkpoint") && !strings.Contains(vout, "lines deleted") {
				t.Fatalf("kmsctl audit verify -anchor: %v\n%s", err, vout)
			}
		})
	}

	// The intact trail is accepted again.
	write(full)
	s = startKMSD(t, env)
	s.stop()

	// After an incident: the operator keeps the cut file and starts a new
	// segment, which continues the anchored chain and says why.
	write(cut)
	out, err := kmsdCmd(t, env, "audit", "new-segment", "-reason", "incident 42: trail cut")
	if err != nil {
		t.Fatalf("kmsd audit new-segment: %v\n%s", err, out)
	}
	incidents, _ := filepath.Glob(path + ".incident-*")
	if len(incidents) != 1 {
		t.Fatalf("the damaged trail was not kept: %v", incidents)
	}
	s = startKMSD(t, env)
	s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("anchored")}})
	s.stop()
	seg, _ := os.ReadFile(path)
	if first := lines(seg)[0]; !bytes.Contains(first, []byte(`"action":"AuditNewSegment"`)) || !bytes.Contains(first, []byte("incident 42")) {
		t.Fatalf("first line of the new segment: %s", first)
	}
	if out, err := kmsctlVerify(t, path); err != nil {
		t.Fatalf("verify of the new segment: %v\n%s", err, out)
	}

	// Rotation: the new file continues the old one's head.
	out, err = kmsdCmd(t, env, "audit", "rotate")
	if err != nil {
		t.Fatalf("kmsd audit rotate: %v\n%s", err, out)
	}
	rotated, _ := filepath.Glob(path + ".0*")
	if len(rotated) != 1 {
		t.Fatalf("rotated files %v", rotated)
	}
	s = startKMSD(t, env)
	s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("anchored")}})
	s.stop()
	if out, err := kmsctlVerify(t, rotated[0], path); err != nil || !strings.Contains(out, "2 files") {
		t.Fatalf("verify across the rotation: %v\n%s", err, out)
	}
	// A line dropped between the files is found.
	old, _ := os.ReadFile(rotated[0])
	ol := lines(old)
	dropped := filepath.Join(t.TempDir(), "rotated")
	os.WriteFile(dropped, bytes.Join(ol[:len(ol)-1], nil), 0o600)
	if out, err := kmsctlVerify(t, "-checkpoints", "none", dropped, path); err == nil || !strings.Contains(out, "does not continue the previous head") {
		t.Fatalf("verify with a line dropped between files: %v\n%s", err, out)
	}
}

// audit0 is the checkpoint file of the trail at path.
func audit0(path string) string { return path + ".checkpoints" }

// rechain renumbers and re-hashes lines from the first whose seq or prev
// does not follow, as someone who removed lines and knows the (unkeyed)
// chain would: the result is a valid chain.
func rechain(t *testing.T, ls [][]byte) []byte {
	t.Helper()
	seqRe := regexp.MustCompile(`^\{"seq":(\d+),`)
	prevRe := regexp.MustCompile(`,"prev":"[0-9a-f]{64}"`)
	var out []byte
	prev := strings.Repeat("0", 64)
	for i, l := range ls {
		body := l[:bytes.LastIndex(l, []byte(`,"hash":"`))]
		body = seqRe.ReplaceAll(body, []byte(fmt.Sprintf(`{"seq":%d,`, i+1)))
		body = prevRe.ReplaceAll(body, []byte(`,"prev":"`+prev+`"`))
		sum := sha256.Sum256(body)
		prev = hex.EncodeToString(sum[:])
		out = append(out, body...)
		out = append(out, `,"hash":"`+prev+"\"}\n"...)
	}
	if _, problems, err := audit.Verify(bytes.NewReader(out)); err != nil || len(problems) != 0 {
		t.Fatalf("rechain: %v %v", problems, err)
	}
	return out
}

// TestClusterTrailsAreAnchoredPerNode: on PostgreSQL each node's trail has
// its own anchor; a node whose trail is intact but whose anchor moved (here:
// a second node configured with the first one's id) refuses to start, and
// an anchor edited in the database is refused as such.
func TestClusterTrailsAreAnchoredPerNode(t *testing.T) {
	c := newCluster(t)
	a := c.start("KMSD_NODE_ID=node-a")
	b := c.start("KMSD_NODE_ID=node-b")
	for _, s := range []*server{a, b} {
		s.createKey("k-" + strings.TrimPrefix(s.url, "http://127.0.0.1:"))
	}
	a.stop()
	b.stop()
	conn := c.pgConn(t)
	var n int
	if err := conn.QueryRow(t.Context(), `SELECT count(*) FROM audit_anchors WHERE node IN ('node-a', 'node-b') AND seq > 0`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("anchors of the two nodes: %d %v", n, err)
	}
	// A third node that takes node-a's id, with a trail of its own.
	c.pause()
	out := refusedStart(t, c.nodeEnv("KMSD_NODE_ID=node-a"))
	if !strings.Contains(out, "ends at line 0 but the store's anchor says line") {
		t.Fatalf("a node whose anchor moved started:\n%s", out)
	}
	// node-b's anchor pushed ahead in the database: its MAC fails.
	pgExec(t, conn, `UPDATE audit_anchors SET seq = seq + 100 WHERE node = 'node-b'`)
	c.pause()
	out = refusedStart(t, c.nodeEnv("KMSD_NODE_ID=node-b"))
	if !strings.Contains(out, "anchor of node \"node-b\" failed its integrity check") {
		t.Fatalf("an edited anchor was accepted:\n%s", out)
	}
}
