package kmsclient

// Unit tests of the client against small httptest servers; the client
// against the real kmsd is tested through kmsctl (cmd/kmsd) and the KMS
// plugin (cmd/kms-plugin).

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"hsmkms/tcsign"
)

func TestNewRefusesBadConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"no scheme":      {Endpoint: "127.0.0.1:8080", SecretID: "id", SecretKey: "k"},
		"ftp":            {Endpoint: "ftp://h:1", SecretID: "id", SecretKey: "k"},
		"no host":        {Endpoint: "http://", SecretID: "id", SecretKey: "k"},
		"no secret key":  {Endpoint: "http://h:1", SecretID: "id"},
		"tls over http":  {Endpoint: "http://h:1", SecretID: "id", SecretKey: "k", TLS: &tls.Config{}},
		"no credentials": {Endpoint: "https://h:1"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
}

// TestCallSignsAndDecodes checks the request kmsd sees (action, version,
// a TC3 signature over the body that the verifier's own functions accept)
// and the decoding of answers and errors.
func TestCallSignsAndDecodes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		ts := r.Header.Get("X-TC-Timestamp")
		var sec int64
		json.Unmarshal([]byte(ts), &sec)
		want := tcsign.SignTC3Action("AKIDtest", "secret", "kms", http.MethodPost, r.Host, "application/json", "", r.Header.Get("X-TC-Action"), sec, body)
		if r.Header.Get("Authorization") != want || r.Header.Get("X-TC-Version") != APIVersion {
			w.WriteHeader(http.StatusForbidden)
			return
		}
		switch r.Header.Get("X-TC-Action") {
		case "Encrypt":
			io.WriteString(w, `{"Response":{"CiphertextBlob":"blob","KeyId":"k","RequestId":"r1"}}`)
		case "Decrypt":
			io.WriteString(w, `{"Response":{"Error":{"Code":"UnauthorizedOperation","Message":"no"},"RequestId":"r2"}}`)
		case "Garbage":
			io.WriteString(w, `<html>`)
		}
	}))
	defer srv.Close()
	c, err := New(Config{Endpoint: srv.URL + "/", SecretID: "AKIDtest", SecretKey: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	var out struct{ CiphertextBlob, KeyId string }
	if err := c.Call(context.Background(), "Encrypt", map[string]any{"KeyId": "k", "Plaintext": "cA=="}, &out); err != nil || out.CiphertextBlob != "blob" {
		t.Fatalf("Encrypt: %v %+v", err, out)
	}
	err = c.Call(context.Background(), "Decrypt", struct{ CiphertextBlob string }{"blob"}, &out)
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != "UnauthorizedOperation" || ae.Action != "Decrypt" || ae.RequestID != "r2" || Code(err) != "UnauthorizedOperation" {
		t.Fatalf("Decrypt: want an APIError, got %v", err)
	}
	if err.Error() != "UnauthorizedOperation: no (RequestId r2)" {
		t.Fatalf("error text %q", err)
	}
	if err := c.Call(context.Background(), "Garbage", map[string]any{}, &out); !errors.Is(err, ErrBadReply) || Code(err) != "" {
		t.Fatalf("Garbage: want ErrBadReply, got %v", err)
	}
	// A wrong key is refused by the server above: the signature covers the key.
	bad, _ := New(Config{Endpoint: srv.URL, SecretID: "AKIDtest", SecretKey: "other"})
	if err := bad.Call(context.Background(), "Encrypt", map[string]any{}, &out); !errors.Is(err, ErrBadReply) || !strings.Contains(err.Error(), "HTTP 403") {
		t.Fatalf("wrong key: %v", err)
	}
}

// TestCallIsBounded: a kmsd that never answers costs a call its Timeout
// (or the caller's deadline, if earlier), not more.
func TestCallIsBounded(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c, _ := New(Config{Endpoint: srv.URL, SecretID: "id", SecretKey: "k", Timeout: 200 * time.Millisecond})
	start := time.Now()
	err := c.Call(context.Background(), "Encrypt", map[string]any{}, &struct{}{})
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("Timeout: %v after %v", err, time.Since(start))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	c2, _ := New(Config{Endpoint: srv.URL, SecretID: "id", SecretKey: "k", Timeout: time.Hour})
	start = time.Now()
	if err := c2.Ready(ctx); !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("caller's deadline: %v after %v", err, time.Since(start))
	}
}

// TestMutualTLS: LoadTLS's configuration trusts only the given CA and
// presents the client certificate to a server that requires one.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	caCert, caKey, caPEM := newCA(t)
	srvCert := issue(t, caCert, caKey, true)
	cliCert := issue(t, caCert, caKey, false)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, `{"status":"ok"}`)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{srvCert.tls}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()

	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ca := write("ca.pem", caPEM)
	cert, key := write("c.pem", cliCert.certPEM), write("c.key", cliCert.keyPEM)
	ready := func(tc *tls.Config) error {
		c, err := New(Config{Endpoint: srv.URL, SecretID: "id", SecretKey: "k", TLS: tc, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c.Ready(context.Background())
	}
	mtls, err := LoadTLS(ca, cert, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := ready(mtls); err != nil {
		t.Fatalf("mTLS: %v", err)
	}
	noCert, _ := LoadTLS(ca, "", "")
	if err := ready(noCert); err == nil {
		t.Fatal("a server requiring a client certificate accepted none")
	}
	if _, err := LoadTLS(ca, cert, ""); err == nil {
		t.Fatal("LoadTLS accepted a certificate without its key")
	}
	if _, err := LoadTLS(key, "", ""); err == nil {
		t.Fatal("LoadTLS accepted a CA file without a certificate")
	}
	if tc, err := LoadTLS("", "", ""); tc != nil || err != nil {
		t.Fatalf("LoadTLS of nothing: %v %v", tc, err)
	}
}

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

type issued struct {
	tls             tls.Certificate
	certPEM, keyPEM []byte
}

func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, server bool) issued {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: "peer"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return issued{tls: pair, certPEM: certPEM, keyPEM: keyPEM}
}
