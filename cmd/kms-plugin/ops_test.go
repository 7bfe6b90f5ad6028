package main

// Operator-facing behaviour: TLS and mTLS to kmsd, the socket's life cycle,
// SIGTERM of the real process, the credential file, the status cache.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kmsapi "k8s.io/kms/apis/v2"

	"hsmkms/kmsclient"
)

// testCA issues certificates for the TLS test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue writes a certificate and key for a server (IP 127.0.0.1) or a
// client into dir and returns their paths.
func (ca *testCA) issue(t *testing.T, dir, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, name+".pem"), filepath.Join(dir, name+".key")
	writeFile(t, certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	writeFile(t, keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}))
	return certFile, keyFile
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestMutualTLSToKmsd: kmsd requires client certificates; the plugin with
// -ca-file, -cert-file and -key-file serves, one without a client
// certificate is unhealthy and says kmsd is unreachable.
func TestMutualTLSToKmsd(t *testing.T) {
	dir := t.TempDir()
	serverCA, clientCA := newCA(t, "server CA"), newCA(t, "client CA")
	sc, sk := serverCA.issue(t, dir, "kmsd", true)
	cc, ck := clientCA.issue(t, dir, "plugin", false)
	caFile, clientCAFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "clients.pem")
	writeFile(t, caFile, serverCA.pem)
	writeFile(t, clientCAFile, clientCA.pem)

	ac, ak := clientCA.issue(t, dir, "admin", false)
	adminTLS, err := kmsclient.LoadTLS(caFile, ac, ak)
	if err != nil {
		t.Fatal(err)
	}
	k := newKMSDWith(t, adminTLS, "KMSD_TLS_CERT_FILE="+sc, "KMSD_TLS_KEY_FILE="+sk, "KMSD_TLS_CLIENT_CA_FILE="+clientCAFile)
	keyID := k.createKey("k8s")
	cred := k.credential("plugin", keyID, pluginActions...)
	endpoint := "https://" + k.proc.addr

	p := startPlugin(t, "-endpoint", endpoint, "-key-id", keyID, "-credential-file", cred, "-ca-file", caFile, "-cert-file", cc, "-key-file", ck)
	if st := statusOf(t, p); st.Healthz != "ok" || st.KeyId != keyID+"/v1" {
		t.Fatalf("Status over mTLS: %+v", st)
	}
	d := dek(t)
	enc, err := p.client.Encrypt(within(t, 5*time.Second), &kmsapi.EncryptRequest{Plaintext: d, Uid: "u"})
	if err != nil {
		t.Fatalf("Encrypt over mTLS: %v", err)
	}
	if dec, err := p.client.Decrypt(within(t, 5*time.Second), &kmsapi.DecryptRequest{Ciphertext: enc.Ciphertext, KeyId: enc.KeyId, Uid: "u"}); err != nil || string(dec.Plaintext) != string(d) {
		t.Fatalf("Decrypt over mTLS: %v", err)
	}

	q := startPlugin(t, "-endpoint", endpoint, "-key-id", keyID, "-credential-file", cred, "-ca-file", caFile)
	if st := statusOf(t, q); st.Healthz == "ok" {
		t.Fatalf("Status without a client certificate: %+v", st)
	}
	// Without -ca-file kmsd's certificate is not trusted (system roots).
	r := startPlugin(t, "-endpoint", endpoint, "-key-id", keyID, "-credential-file", cred, "-cert-file", cc, "-key-file", ck)
	if st := statusOf(t, r); st.Healthz == "ok" || !strings.Contains(st.Healthz, "certificate") {
		t.Fatalf("Status with an untrusted server certificate: %+v", st)
	}
}

// TestSocketLifeCycle: a stale socket (left by a crash) is replaced, a live
// one or a file that is not a socket is refused, and the socket is
// removed on stop.
func TestSocketLifeCycle(t *testing.T) {
	dir := shortTempDir(t)
	cred := filepath.Join(dir, "cred")
	writeFile(t, cred, []byte("TENCENTCLOUD_SECRET_ID=AKIDx\nTENCENTCLOUD_SECRET_KEY=y\n"))
	args := func(sock string) []string {
		return []string{"-socket", "unix://" + sock, "-endpoint", "http://127.0.0.1:1", "-key-id", "k", "-credential-file", cred}
	}

	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	p := startPlugin(t, args(stale)...)
	if st := statusOf(t, p); st.Healthz == "ok" {
		t.Fatalf("Status with no kmsd: %+v", st)
	}
	// A second plugin on the same, live socket is refused.
	err = run(context.Background(), args(stale), io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("a second plugin on a live socket: %v", err)
	}
	if err := p.stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after stop: %v", err)
	}

	notSocket := filepath.Join(dir, "file")
	writeFile(t, notSocket, []byte("keep me"))
	if err := run(context.Background(), args(notSocket), io.Discard, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a regular file at the socket path: %v", err)
	}
	if b, _ := os.ReadFile(notSocket); string(b) != "keep me" {
		t.Fatal("the regular file was replaced")
	}
	for _, bad := range []string{"relative.sock", "unix://@abstract", ""} {
		a := args(dir)
		a[1] = bad
		if err := run(context.Background(), a, io.Discard, nil); err == nil || !strings.Contains(err.Error(), "-socket") {
			t.Errorf("-socket %q: %v", bad, err)
		}
	}
}

// TestSIGTERM runs the real process (this test binary as the plugin's
// main): SIGTERM makes it stop cleanly, exit 0 and remove its socket.
func TestSIGTERM(t *testing.T) {
	dir := shortTempDir(t)
	cred := filepath.Join(dir, "cred")
	writeFile(t, cred, []byte("TENCENTCLOUD_SECRET_ID=AKIDx\nTENCENTCLOUD_SECRET_KEY=y\n"))
	sock := filepath.Join(dir, "kms.sock")
	cmd := exec.Command(os.Args[0], "-socket", sock, "-endpoint", "http://127.0.0.1:1", "-key-id", "k", "-credential-file", cred)
	cmd.Env = append(os.Environ(), "KMS_PLUGIN_TEST_MAIN=1")
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	waitFor := func(msg string) {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				var e struct{ Msg string }
				if !ok {
					t.Fatalf("the plugin exited before logging %q", msg)
				}
				if json.Unmarshal([]byte(l), &e) == nil && e.Msg == msg {
					return
				}
			case <-timeout:
				t.Fatalf("no %q within 30s", msg)
			}
		}
	}
	waitFor("listening")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v %v", fi, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	waitFor("stopped")
	for range lines {
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after SIGTERM: %v", err)
	}
}

func TestReadCredential(t *testing.T) {
	dir := t.TempDir()
	for name, c := range map[string]struct {
		body, id string
		ok       bool
	}{
		"kmsctl output": {"TENCENTCLOUD_SECRET_ID=AKID1\nTENCENTCLOUD_SECRET_KEY=k=ey\n", "AKID1", true},
		"comments":      {"# plugin\n\n TENCENTCLOUD_SECRET_ID=AKID2 \nTENCENTCLOUD_SECRET_KEY=k\n", "AKID2", true},
		"no key":        {"TENCENTCLOUD_SECRET_ID=AKID3\n", "", false},
		"stray line":    {"TENCENTCLOUD_SECRET_ID=a\nTENCENTCLOUD_SECRET_KEY=b\nexport X=1\n", "", false},
	} {
		f := filepath.Join(dir, strings.ReplaceAll(name, " ", "_"))
		writeFile(t, f, []byte(c.body))
		id, _, err := readCredential(f)
		if (err == nil) != c.ok || id != c.id {
			t.Errorf("%s: %q, %v", name, id, err)
		}
		// The error never repeats the file's lines (they hold the SecretKey).
		if err != nil && strings.Contains(err.Error(), "TENCENTCLOUD_SECRET_ID=a") {
			t.Errorf("%s: the error quotes the file: %v", name, err)
		}
	}
	if _, _, err := readCredential(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing credential file was accepted")
	}
}

// countingKMSD is a narrow fake of kmsd for the status cache's unit test.
type countingKMSD struct {
	describes, readies atomic.Int32
	release            chan struct{}
	version            atomic.Uint32
}

func (f *countingKMSD) Call(ctx context.Context, action string, params, out any) error {
	f.describes.Add(1)
	<-f.release
	md := map[string]any{"KeyMetadata": map[string]any{"KeyId": "k", "KeyState": "Enabled", "CurrentVersion": f.version.Load()}}
	b, _ := json.Marshal(md)
	return json.Unmarshal(b, out)
}

func (f *countingKMSD) Ready(ctx context.Context) error {
	f.readies.Add(1)
	return nil
}

// TestStatusCacheProbesOnce: many concurrent Status calls make one probe,
// a result is reused for the TTL, and a caller whose deadline passes while
// the probe runs gets its deadline error, not a hang.
func TestStatusCacheProbesOnce(t *testing.T) {
	f := &countingKMSD{release: make(chan struct{})}
	f.version.Store(1)
	p := &plugin{kmsd: f, keyID: "k", callTimeout: time.Second, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		status: statusCache{ttl: time.Hour, timeout: 10 * time.Second}}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := p.Status(ctx); err == nil {
		t.Fatal("Status returned before the probe ended")
	}
	var wg sync.WaitGroup
	results := make(chan string, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := p.Status(context.Background())
			if err != nil {
				t.Error(err)
				return
			}
			results <- r.Healthz + " " + r.KeyID
		}()
	}
	close(f.release)
	wg.Wait()
	close(results)
	for r := range results {
		if r != "ok k/v1" {
			t.Fatalf("Status = %q", r)
		}
	}
	if d, r := f.describes.Load(), f.readies.Load(); d != 1 || r != 1 {
		t.Fatalf("%d DescribeKey and %d /readyz calls for 51 Status calls; want 1 each", d, r)
	}
	// An Encrypt that reveals a rotation drops the cached result.
	p.status.sawKeyID("k/v2")
	f.version.Store(2)
	if r, err := p.Status(context.Background()); err != nil || r.KeyID != "k/v2" || f.describes.Load() != 2 {
		t.Fatalf("after a rotation seen by Encrypt: %+v %v (%d probes)", r, err, f.describes.Load())
	}
}
