package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"
)

// dek is what kube-apiserver sends to Encrypt: a fresh 32-byte DEK seed
// (KMS v2 with KMSv2KDF; a 32-byte AES-256 DEK without it).
func dek(t *testing.T) []byte {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// statusOf calls Status with a deadline, as the apiserver's health check does.
func statusOf(t *testing.T, p *testPlugin) *kmsapi.StatusResponse {
	t.Helper()
	r, err := p.client.Status(within(t, 5*time.Second), &kmsapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	return r
}

// assertNoLeak fails if a log holds a DEK in any usual encoding.
func assertNoLeak(t *testing.T, logs []string, deks ...[]byte) {
	t.Helper()
	for _, d := range deks {
		for _, enc := range []string{base64.StdEncoding.EncodeToString(d), base64.RawStdEncoding.EncodeToString(d), hex.EncodeToString(d), string(d)} {
			for _, l := range logs {
				if strings.Contains(l, enc) {
					t.Fatalf("a DEK reached a log:\n%s", l)
				}
			}
		}
	}
}

// TestEncryptDecryptStatusAndRotation drives the plugin through its socket
// against a real kmsd: Status, a round trip of a 32-byte DEK, the shape of
// the answers the apiserver validates, rotation (a new key_id; old
// ciphertexts still open), a disabled CMK, and a credential that may not
// decrypt.
func TestEncryptDecryptStatusAndRotation(t *testing.T) {
	k := newKMSD(t)
	keyID := k.createKey("k8s-secrets")
	p := startPlugin(t, "-endpoint", k.url(), "-key-id", keyID, "-credential-file", k.credential("plugin", keyID, pluginActions...),
		"-status-cache", "100ms", "-debug")

	// The socket is the apiserver's only way in: owner-only.
	fi, err := os.Stat(p.socket)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v, mode %v; want a socket with mode 0600", p.socket, err, fi.Mode())
	}

	st := statusOf(t, p)
	v1 := keyID + "/v1"
	if st.Version != "v2" || st.Healthz != "ok" || st.KeyId != v1 {
		t.Fatalf("Status = %+v, want v2, ok, %s", st, v1)
	}

	d1 := dek(t)
	enc, err := p.client.Encrypt(within(t, 5*time.Second), &kmsapi.EncryptRequest{Plaintext: d1, Uid: "uid-1"})
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	// The apiserver refuses ciphertexts and key ids of 1 kB or more, and
	// annotation keys that are not fully qualified domain names.
	// The ciphertext is kmsd's binary envelope: 21-byte header, IV length,
	// 12-byte IV, 32 bytes sealed, 16-byte tag.
	if enc.KeyId != v1 || len(enc.Ciphertext) != 82 || bytes.Contains(enc.Ciphertext, d1) {
		t.Fatalf("Encrypt = key_id %q, %d-byte ciphertext", enc.KeyId, len(enc.Ciphertext))
	}
	if got := string(enc.Annotations[annotationEnvelope]); got != "1" || len(enc.Annotations) != 1 || strings.Count(annotationEnvelope, ".") < 2 {
		t.Fatalf("annotations %q", enc.Annotations)
	}
	dec, err := p.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Annotations: enc.Annotations, Uid: "uid-2"})
	if err != nil || !bytes.Equal(dec.Plaintext, d1) {
		t.Fatalf("Decrypt: %v", err)
	}

	// Bad input gets a clear error.
	for name, pt := range map[string][]byte{"empty": nil, "4097 bytes": make([]byte, 4097)} {
		if _, err := p.client.Encrypt(within(t, 5*time.Second), &kmsapi.EncryptRequest{Plaintext: pt, Uid: "u"}); status.Code(err) != codes.InvalidArgument {
			t.Errorf("Encrypt of %s: %v, want InvalidArgument", name, err)
		}
	}
	tampered := bytes.Clone(enc.Ciphertext)
	tampered[len(tampered)-1] ^= 1
	if _, err := p.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: tampered, KeyId: v1, Uid: "u"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Decrypt of a tampered ciphertext: %v, want InvalidArgument", err)
	}
	if _, err := p.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: []byte("not an envelope"), KeyId: v1, Uid: "u"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("Decrypt of garbage: %v, want InvalidArgument", err)
	}

	// Rotation: the next Status and Encrypt name the new version.
	k.call("RotateKey", map[string]any{"KeyId": keyID}, nil)
	v2 := keyID + "/v2"
	eventually(t, 10*time.Second, "Status reports the rotated key_id", func() bool { return statusOf(t, p).KeyId == v2 })
	d2 := dek(t)
	enc2, err := p.client.Encrypt(within(t, 5*time.Second), &kmsapi.EncryptRequest{Plaintext: d2, Uid: "uid-3"})
	if err != nil || enc2.KeyId != v2 {
		t.Fatalf("Encrypt after rotation: %v, key_id %q, want %s", err, enc2.GetKeyId(), v2)
	}
	for _, c := range []struct {
		enc *kmsapi.EncryptResponse
		dek []byte
	}{{enc, d1}, {enc2, d2}} {
		dec, err := p.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: c.enc.Ciphertext, KeyId: c.enc.KeyId, Annotations: c.enc.Annotations, Uid: "u"})
		if err != nil || !bytes.Equal(dec.Plaintext, c.dek) {
			t.Fatalf("Decrypt of a %s ciphertext after rotation: %v", c.enc.KeyId, err)
		}
	}

	// A disabled CMK is unhealthy (and says why); enabled again, healthy.
	k.call("DisableKey", map[string]any{"KeyId": keyID}, nil)
	eventually(t, 10*time.Second, "Status unhealthy for a disabled CMK", func() bool {
		st := statusOf(t, p)
		return st.Healthz != "ok" && strings.Contains(st.Healthz, "Disabled") && st.KeyId == v2
	})
	if _, err := p.client.Encrypt(within(t, 5*time.Second), &kmsapi.EncryptRequest{Plaintext: dek(t), Uid: "u"}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Encrypt under a disabled CMK: %v, want FailedPrecondition", err)
	}
	k.call("EnableKey", map[string]any{"KeyId": keyID}, nil)
	eventually(t, 10*time.Second, "Status healthy again", func() bool { return statusOf(t, p).Healthz == "ok" })

	// A credential without kms:Decrypt: Encrypt and Status work, Decrypt
	// fails with PermissionDenied and a message naming the fix.
	q := startPlugin(t, "-endpoint", k.url(), "-key-id", keyID, "-credential-file", k.credential("no-decrypt", keyID, "kms:Encrypt", "kms:DescribeKey"))
	if st := statusOf(t, q); st.Healthz != "ok" {
		t.Fatalf("Status of the no-decrypt plugin: %+v", st)
	}
	_, err = q.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: enc2.Ciphertext, KeyId: v2, Uid: "u"})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "UnauthorizedOperation") || !strings.Contains(err.Error(), "kms:Decrypt") {
		t.Fatalf("Decrypt without kms:Decrypt: %v", err)
	}
	// A credential for another key: Status says so.
	other := k.createKey("other")
	r := startPlugin(t, "-endpoint", k.url(), "-key-id", other, "-credential-file", k.credential("wrong-key", keyID, pluginActions...))
	if st := statusOf(t, r); st.Healthz == "ok" || !strings.Contains(st.Healthz, "UnauthorizedOperation") || st.KeyId == "" {
		t.Fatalf("Status with a credential for another key: %+v", st)
	}

	logs := []string{p.log.String(), q.log.String(), r.log.String()}
	for _, l := range k.logs {
		logs = append(logs, l.String())
	}
	if !strings.Contains(p.log.String(), `"msg":"encrypt"`) {
		t.Fatalf("the -debug log has no encrypt line:\n%s", p.log.String())
	}
	assertNoLeak(t, logs, d1, d2)
}

// TestKmsdDownAndBack: with kmsd stopped, Status turns unhealthy and calls
// fail within their deadline; with kmsd back on the same address, the same
// plugin is healthy again and opens the ciphertexts it made before.
func TestKmsdDownAndBack(t *testing.T) {
	k := newKMSD(t)
	keyID := k.createKey("k8s")
	p := startPlugin(t, "-endpoint", k.url(), "-key-id", keyID, "-credential-file", k.credential("plugin", keyID, pluginActions...),
		"-status-cache", "100ms")
	if st := statusOf(t, p); st.Healthz != "ok" {
		t.Fatalf("Status: %+v", st)
	}
	d := dek(t)
	enc, err := p.client.Encrypt(within(t, 5*time.Second), &kmsapi.EncryptRequest{Plaintext: d, Uid: "u"})
	if err != nil {
		t.Fatal(err)
	}

	k.stop()
	eventually(t, 10*time.Second, "Status unhealthy with kmsd stopped", func() bool {
		st := statusOf(t, p)
		return st.Healthz != "ok" && st.KeyId == keyID+"/v1"
	})
	for name, call := range map[string]func(context.Context) error{
		"Encrypt": func(ctx context.Context) error {
			_, err := p.client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: dek(t), Uid: "u"})
			return err
		},
		"Decrypt": func(ctx context.Context) error {
			_, err := p.client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u"})
			return err
		},
	} {
		start := time.Now()
		err := call(within(t, 3*time.Second))
		if c := status.Code(err); c != codes.Unavailable || !strings.Contains(err.Error(), "unreachable") || time.Since(start) > 3*time.Second {
			t.Errorf("%s with kmsd stopped: %v after %v; want Unavailable within the deadline", name, err, time.Since(start))
		}
	}

	k.start(k.proc.addr)
	eventually(t, 15*time.Second, "Status healthy with kmsd back", func() bool { return statusOf(t, p).Healthz == "ok" })
	dec, err := p.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u"})
	if err != nil || !bytes.Equal(dec.Plaintext, d) {
		t.Fatalf("Decrypt with kmsd back: %v", err)
	}
}

// TestHungKmsdRespectsDeadlines: a kmsd that accepts connections but never
// answers costs each call its gRPC deadline, not more, and graceful
// shutdown does not wait for it past -shutdown-grace.
func TestHungKmsdRespectsDeadlines(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// The hung kmsd reads each request, reports its action, and never answers.
	actions := make(chan string, 100)
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
			go func() {
				if req, err := http.ReadRequest(bufio.NewReader(c)); err == nil {
					a := req.Header.Get("X-TC-Action")
					if a == "" {
						a = req.URL.Path
					}
					select {
					case actions <- a:
					default:
					}
				}
			}()
		}
	}()
	cred := filepath.Join(t.TempDir(), "cred")
	os.WriteFile(cred, []byte("TENCENTCLOUD_SECRET_ID=AKIDx\nTENCENTCLOUD_SECRET_KEY=y\n"), 0o600)
	p := startPlugin(t, "-endpoint", "http://"+ln.Addr().String(), "-key-id", "k", "-credential-file", cred,
		"-status-timeout", "300ms", "-shutdown-grace", "500ms")
	for name, call := range map[string]func(context.Context) error{
		"Encrypt": func(ctx context.Context) error {
			_, err := p.client.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: dek(t), Uid: "u"})
			return err
		},
		"Decrypt": func(ctx context.Context) error {
			_, err := p.client.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: []byte{1, 2, 3}, KeyId: "k/v1", Uid: "u"})
			return err
		},
	} {
		start := time.Now()
		err := call(within(t, 400*time.Millisecond))
		if status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 2*time.Second {
			t.Errorf("%s against a hung kmsd: %v after %v; want DeadlineExceeded at the deadline", name, err, time.Since(start))
		}
	}
	// Status: bounded by -status-timeout even when the caller allows more.
	start := time.Now()
	st := statusOf(t, p)
	if st.Healthz == "ok" || st.KeyId != "unknown" || time.Since(start) > 3*time.Second {
		t.Errorf("Status against a hung kmsd: %+v after %v", st, time.Since(start))
	}

	// SIGTERM (run's context) with a call in flight: the call ends at its
	// deadline or the grace period, and run returns.
	inflight := make(chan error, 1)
	go func() {
		_, err := p.client.Encrypt(within(t, 20*time.Second), &kmsapi.EncryptRequest{Plaintext: dek(t), Uid: "u"})
		inflight <- err
	}()
	for reached := false; !reached; {
		select {
		case a := <-actions:
			// The earlier calls' requests are queued before this one.
			reached = a == "Encrypt" && len(actions) == 0
		case <-time.After(10 * time.Second):
			t.Fatal("the Encrypt in flight did not reach the hung kmsd")
		}
	}
	start = time.Now()
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("graceful stop took %v with -shutdown-grace 500ms", time.Since(start))
	}
	if err := <-inflight; err == nil {
		t.Error("the Encrypt in flight succeeded against a hung kmsd")
	}
	if _, err := os.Lstat(p.socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind after stop: %v", err)
	}
}
