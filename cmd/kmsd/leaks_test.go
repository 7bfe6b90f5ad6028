package main_test

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
)

// leakWatch collects the secrets the e2e tests use (plaintexts, data keys,
// SecretKeys) and everything kmsd wrote (its log and its audit trail), so
// that TestMain can check, after every test ran, that no secret reached any
// log or audit line of the whole run.
var leakWatch struct {
	mu      sync.Mutex
	secrets map[string]bool
	texts   []string
}

// minSecret is the shortest secret watched: shorter strings (and their
// base64) turn up by chance in request ids and hashes.
const minSecret = 12

// secret registers s, raw and base64-encoded, as something no log may
// contain, and returns it.
func secret(s string) string {
	if len(s) < minSecret {
		return s
	}
	leakWatch.mu.Lock()
	defer leakWatch.mu.Unlock()
	if leakWatch.secrets == nil {
		leakWatch.secrets = map[string]bool{}
	}
	leakWatch.secrets[s] = true
	leakWatch.secrets[base64.StdEncoding.EncodeToString([]byte(s))] = true
	return s
}

// watchOutput records what a kmsd process wrote: its log, and the audit
// trail its environment names.
func watchOutput(env []string, log string) {
	texts := []string{log}
	var dataDir, auditFile string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "KMSD_DATA_DIR="); ok {
			dataDir = v
		}
		if v, ok := strings.CutPrefix(kv, "KMSD_AUDIT_FILE="); ok {
			auditFile = v
		}
	}
	if auditFile == "" && dataDir != "" {
		auditFile = dataDir + "/audit.log"
	}
	if auditFile != "" && !strings.HasPrefix(auditFile, "/dev/") {
		if b, err := os.ReadFile(auditFile); err == nil {
			texts = append(texts, string(b))
		}
	}
	leakWatch.mu.Lock()
	leakWatch.texts = append(leakWatch.texts, texts...)
	leakWatch.mu.Unlock()
}

// checkLeaks reports every secret found in a recorded output.
func checkLeaks() error {
	leakWatch.mu.Lock()
	defer leakWatch.mu.Unlock()
	if len(leakWatch.texts) == 0 {
		return nil // no kmsd ran (go test -run selected none): nothing to check
	}
	if len(leakWatch.secrets) == 0 {
		return fmt.Errorf("leak check: %d kmsd outputs but no secret recorded: the check would prove nothing", len(leakWatch.texts))
	}
	for s := range leakWatch.secrets {
		for _, text := range leakWatch.texts {
			if strings.Contains(text, s) {
				return fmt.Errorf("leak check: a secret used by the tests (%.6s…) appears in kmsd's log or audit trail", s)
			}
		}
	}
	return nil
}

// The leak check can fail: a recorded output holding a secret is found.
func TestLeakCheckDetects(t *testing.T) {
	leakWatch.mu.Lock()
	saved, savedTexts := leakWatch.secrets, leakWatch.texts
	leakWatch.secrets, leakWatch.texts = nil, nil
	leakWatch.mu.Unlock()
	defer func() {
		leakWatch.mu.Lock()
		leakWatch.secrets, leakWatch.texts = saved, savedTexts
		leakWatch.mu.Unlock()
	}()
	secret("canary-plaintext-0123")
	watchOutput(nil, `{"msg":"nothing to see"}`)
	if err := checkLeaks(); err != nil {
		t.Fatalf("clean output: %v", err)
	}
	watchOutput(nil, `{"msg":"oops","pt":"`+base64.StdEncoding.EncodeToString([]byte("canary-plaintext-0123"))+`"}`)
	if err := checkLeaks(); err == nil {
		t.Fatal("a logged base64 plaintext was not found")
	}
}
