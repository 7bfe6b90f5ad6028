package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchSmoke runs the whole bench harness (raw ceiling, kmsd on a fresh
// token, every operation, many-keys, network HSM, two nodes, soak) with tiny numbers so that make
// bench never rots. It asserts that every part ran without request errors,
// never any timing.
func TestBenchSmoke(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "kmsd")
	if out, err := exec.Command("go", "build", "-o", bin, "hsmkms/cmd/kmsd").CombinedOutput(); err != nil {
		t.Fatalf("building kmsd: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := runBench(ctx, options{
		kmsdBin: bin, workDir: filepath.Join(dir, "work"),
		rounds: 1, dur: 150 * time.Millisecond, warm: 50 * time.Millisecond, rawDur: 100 * time.Millisecond,
		conc: []int{2}, size: 64,
		manyKeys: 5, manyConc: 2,
		soak: 300 * time.Millisecond, soakConc: 2,
		parts: map[string]bool{"main": true, "manykeys": true, "network": true, "twonode": true, "soak": true},
	}, &out)
	t.Logf("bench output:\n%s", out.String())
	if err != nil {
		t.Fatalf("runBench: %v", err)
	}
	s := out.String()
	for _, want := range []string{
		"raw ceiling (1 KiB CKM_AES_GCM",
		"\nencrypt ", "\ndecrypt ", "\ngeneratedatakey ", "\nlegacy-encrypt ", "\naws-encrypt ",
		"created 5 CMKs", "kmsd start-up with 6 keys",
		"network_hsm_ratio_to_ideal: ",
		"two_node_ratio_to_one: ",
		"soak RSS: before load",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if strings.Contains(s, "first error:") {
		t.Error("requests failed (see \"first error\" in the output)")
	}
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if last := lines[len(lines)-1]; !strings.HasPrefix(last, "encrypt_ratio_to_raw_hsm: ") {
		t.Errorf("last line %q, want encrypt_ratio_to_raw_hsm: X.XX", last)
	}
}
