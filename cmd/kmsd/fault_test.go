package main_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"
	"go.uber.org/goleak"

	"hsmkms/softhsm"
	"hsmkms/softhsm/faultmod"
)

// TestTokenOutageAndRecovery runs kmsd on the fault-injection module under
// steady load from the official Go SDK, removes the token for 5 seconds and
// puts it back: every request during the outage gets a clean error before
// its deadline, /readyz goes false then true, and every request is served
// again soon after the token is back, without a restart.
func TestTokenOutageAndRecovery(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	tok := softhsm.NewSoftHSM2TokenNoEnv(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
	env := append(kmsdEnv(tok, t.TempDir()), ctl.Env()...)
	env = append(env, "KMSD_PKCS11_MODULE="+so)
	bootstrap(t, env)
	s := startKMSD(t, env)

	const deadline = 5 * time.Second
	c := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
	ck := tckms.NewCreateKeyRequest()
	ck.Alias = common.StringPtr("outage")
	created, err := c.CreateKey(ck)
	if err != nil {
		t.Fatal(err)
	}
	keyID := *created.Response.KeyId

	type result struct {
		start   time.Time
		latency time.Duration
		code    string // "" on success
	}
	var (
		mu      sync.Mutex
		results []result
	)
	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cl := sdkClient(t, s, "TC3-HMAC-SHA256", "POST", adminID, adminKey)
			for ctx.Err() == nil {
				req := tckms.NewEncryptRequest()
				req.KeyId = common.StringPtr(keyID)
				req.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString([]byte("steady load")))
				rctx, cancel := context.WithTimeout(ctx, deadline)
				start := time.Now()
				_, err := cl.EncryptWithContext(rctx, req)
				cancel()
				if ctx.Err() != nil {
					return
				}
				code := ""
				if err != nil {
					code = sdkCode(err)
				}
				mu.Lock()
				results = append(results, result{start, time.Since(start), code})
				mu.Unlock()
				time.Sleep(5 * time.Millisecond) // pacing of the load, not synchronisation
			}
		}()
	}
	ready := func() int {
		resp, err := http.Get(s.url + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}

	// served counts the successful requests started after from.
	served := func(from time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, r := range results {
			if r.code == "" && r.start.After(from) {
				n++
			}
		}
		return n
	}
	within(t, 20*time.Second, "steady load served", func() bool { return served(time.Time{}) >= 20 })
	outage := time.Now()
	ctl.RemoveToken(true)
	sawNotReady := false
	for time.Since(outage) < 5*time.Second {
		if ready() == http.StatusServiceUnavailable {
			sawNotReady = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctl.RemoveToken(false)
	healed := time.Now()
	sawReady := false
	for time.Since(healed) < 5*time.Second {
		if ready() == http.StatusOK {
			sawReady = true
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Requests from 2 s after healing must all be served: collect some.
	within(t, 30*time.Second, "load served again after healing", func() bool { return served(healed.Add(2*time.Second)) >= 20 })
	stop()
	wg.Wait()
	s.stop()
	http.DefaultClient.CloseIdleConnections()
	// The load goroutines and everything they started are gone; only the
	// SDK clients' idle keep-alive connections may linger.
	goleak.VerifyNone(t, leaks,
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"))

	if !sawNotReady || !sawReady {
		t.Fatalf("/readyz: not ready during the outage %v, ready after it %v", sawNotReady, sawReady)
	}
	var during, afterOK, after, failedDuring int
	for _, r := range results {
		if r.latency >= deadline {
			t.Errorf("a request took %v, past its %v deadline (code %q)", r.latency, deadline, r.code)
		}
		if r.code != "" && !strings.HasPrefix(r.code, "UnsupportedOperation.ServiceTemporaryUnavailable") && r.code != "RequestLimitExceeded" {
			t.Errorf("a request failed with %q, not a clean temporarily-unavailable error", r.code)
		}
		switch {
		case r.start.After(outage.Add(500*time.Millisecond)) && r.start.Before(healed):
			during++
			if r.code != "" {
				failedDuring++
			}
		case r.start.After(healed.Add(2 * time.Second)):
			after++
			if r.code == "" {
				afterOK++
			}
		}
	}
	if during == 0 || failedDuring == 0 {
		t.Fatalf("%d requests during the outage, %d failed: the outage was not observed", during, failedDuring)
	}
	if after == 0 || afterOK != after {
		t.Fatalf("%d of %d requests served from 2 s after the token came back, want all", afterOK, after)
	}
	t.Logf("%d requests: %d during the outage (%d refused cleanly), %d/%d served after healing", len(results), during, failedDuring, afterOK, after)
}

// TestHSMGeneratedIVMode runs kmsd with iv_mode hsm on the fault module
// emulating a FIPS-mode HSM (it refuses caller IVs and writes its own):
// blobs round-trip, and each carries the IV the HSM chose.
func TestHSMGeneratedIVMode(t *testing.T) {
	tok := softhsm.NewSoftHSM2TokenNoEnv(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
	ctl.HSMGeneratedIV(true)
	env := append(kmsdEnv(tok, t.TempDir()), ctl.Env()...)
	env = append(env, "KMSD_PKCS11_MODULE="+so, "KMSD_IV_MODE=hsm")
	bootstrap(t, env)

	s := startKMSD(t, env)
	key := s.createKey("fips")
	var blobs []string
	for range 2 {
		enc := s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("HSM-chosen IV payload")}})
		blobs = append(blobs, enc.CiphertextBlob)
		dec := s.mustOK(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {enc.CiphertextBlob}})
		if dec.Plaintext != b64("HSM-chosen IV payload") {
			t.Fatalf("Decrypt: %+v", dec)
		}
	}
	ivOf := func(blob string) []byte {
		raw, _ := base64.StdEncoding.DecodeString(blob)
		return raw[22:34]
	}
	if bytes.Equal(ivOf(blobs[0]), make([]byte, 12)) || bytes.Equal(ivOf(blobs[0]), ivOf(blobs[1])) {
		t.Fatalf("IVs %x and %x: want the HSM's own, distinct", ivOf(blobs[0]), ivOf(blobs[1]))
	}
	s.stop()
	// A fixed spacing, not a wait for an event: SoftHSM2 processes opening
	// one token directory at the same instant can fail, and it offers
	// nothing to poll.
	time.Sleep(200 * time.Millisecond)

	// The default mode sends kmsd's own IV, which this HSM refuses: kmsd
	// refuses to start (self-check) and names the setting.
	out := kmsdFails(t, append(env, "KMSD_IV_MODE=caller"))
	if !strings.Contains(out, "CKM_AES_GCM") || !strings.Contains(out, "iv_mode") {
		t.Fatalf("kmsd with caller IVs on an HSM that refuses them:\n%s", out)
	}
}

// kmsdFails runs kmsd with env (and args), expects it to exit with an
// error within 30 s, and returns its output.
func kmsdFails(t *testing.T, env []string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "kmsd"), args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("kmsd %v did not exit:\n%s", args, out)
	}
	if err == nil {
		t.Fatalf("kmsd %v succeeded:\n%s", args, out)
	}
	return string(out)
}

// errorLine returns the one line of out that carries kmsd's fatal error.
func errorLine(t *testing.T, out string) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "kmsd: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("want exactly one \"kmsd: \" error line, got %d:\n%s", len(lines), out)
	}
	return lines[0]
}

// TestStartupSelfCheck: against a module without CKM_AES_GCM kmsd refuses
// to start with one line naming the module and CKM_AES_GCM, and so does
// kmsd check-config; against a wrong PIN check-config says so after a
// single C_Login.
func TestStartupSelfCheck(t *testing.T) {
	tok := softhsm.NewSoftHSM2TokenNoEnv(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
	env := append(kmsdEnv(tok, t.TempDir()), ctl.Env()...)
	env = append(env, "KMSD_PKCS11_MODULE="+so)

	cmd := exec.Command(filepath.Join(binDir, "kmsd"), "check-config")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "self-check passed") {
		t.Fatalf("check-config on a good module: %v\n%s", err, out)
	}

	ctl.HideMechanism(0x1087) // CKM_AES_GCM (only hsm/p11 imports PKCS#11)
	for _, args := range [][]string{nil, {"check-config"}} {
		line := errorLine(t, kmsdFails(t, env, args...))
		for _, want := range []string{"CKM_AES_GCM", so, "not supported"} {
			if !strings.Contains(line, want) {
				t.Errorf("kmsd %v: %q does not mention %q", args, line, want)
			}
		}
	}
	ctl.Reset()

	before := ctl.Calls("C_Login")
	line := errorLine(t, kmsdFails(t, append(env, "KMSD_PIN=wrong-pin-4711"), "check-config"))
	if !strings.Contains(line, "CKR_PIN_INCORRECT") || !strings.Contains(line, "PIN") || strings.Contains(line, "wrong-pin-4711") {
		t.Fatalf("check-config with a wrong PIN: %q", line)
	}
	if n := ctl.Calls("C_Login") - before; n != 1 {
		t.Fatalf("check-config with a wrong PIN called C_Login %d times, want 1", n)
	}
}

// TestWrongPINWhileRunning: the PIN is changed on the HSM while kmsd runs
// and the token is re-initialised (removed and put back). kmsd logs in
// once, is refused, and stops: /readyz fails, the log says why, requests
// fail cleanly, and C_Login is never called again (on Luna or CloudHSM
// every attempt counts towards locking the user).
func TestWrongPINWhileRunning(t *testing.T) {
	tok := softhsm.NewSoftHSM2TokenNoEnv(t)
	so := faultmod.Build(t)
	ctl := faultmod.NewController(t)
	env := append(kmsdEnv(tok, t.TempDir()), ctl.Env()...)
	env = append(env, "KMSD_PKCS11_MODULE="+so)
	bootstrap(t, env)
	s := startKMSD(t, env)
	key := s.createKey("pin")
	s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}})

	ctl.Fail("C_Login", 0xA0) // CKR_PIN_INCORRECT: the PIN was changed on the HSM
	ctl.RemoveToken(true)
	s.call(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}})
	ctl.RemoveToken(false)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(s.stderr.String(), "will not be retried") {
		s.call(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}})
		resp, err := http.Get(s.url + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
		if time.Now().After(deadline) {
			t.Fatalf("kmsd does not say it stopped logging in:\n%s", s.stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	logins := ctl.Calls("C_Login")
	// Absence over time is what is checked here, so this waits a fixed
	// while: longer than the recovery loop's longest pause (1 s).
	time.Sleep(2500 * time.Millisecond)
	for range 5 {
		if r := s.call(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}}); r.Code == 0 {
			t.Fatalf("Encrypt succeeded with a refused PIN: %+v", r)
		}
	}
	resp, err := http.Get(s.url + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("/readyz = %d, want 503", resp.StatusCode)
	}
	if n := ctl.Calls("C_Login") - logins; n != 0 {
		t.Fatalf("kmsd called C_Login %d more times after the PIN was refused", n)
	}
}
