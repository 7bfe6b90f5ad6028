package main_test

// Operator-facing behaviour of the real kmsd: TLS and mTLS with the official
// Go SDK, health and metrics endpoints, the audit trail, limits.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"

	"hsmkms/softhsm"
)

// testCA issues certificates for the TLS tests.
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

// issue returns a PEM certificate and key for a server (IP 127.0.0.1) or a client.
func (ca *testCA) issue(t *testing.T, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature}
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
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

func write(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func sdkEncrypt(c *tckms.Client, keyID string) error {
	req := tckms.NewEncryptRequest()
	req.KeyId = common.StringPtr(keyID)
	req.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString([]byte("over TLS")))
	_, err := c.Encrypt(req)
	return err
}

func TestTLSAndMTLSWithTheGoSDK(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	dir := t.TempDir()
	ca, clientCA, rogueCA := newCA(t, "server CA"), newCA(t, "client CA"), newCA(t, "rogue CA")
	sc, sk := ca.issue(t, "kmsd", true)
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	s := startKMSD(t, append(env,
		"KMSD_TLS_CERT_FILE="+write(t, dir, "server.pem", sc),
		"KMSD_TLS_KEY_FILE="+write(t, dir, "server.key", sk),
		"KMSD_TLS_CLIENT_CA_FILE="+write(t, dir, "clients.pem", clientCA.pem)))
	s.url = strings.Replace(s.url, "http://", "https://", 1)
	host := strings.TrimPrefix(s.url, "https://")

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.pem)
	client := func(cert *tls.Certificate, minVer uint16) *tckms.Client {
		tc := &tls.Config{RootCAs: roots, MinVersion: minVer, MaxVersion: 0}
		if cert != nil {
			tc.Certificates = []tls.Certificate{*cert}
		}
		cpf := profile.NewClientProfile()
		cpf.HttpProfile.Endpoint = host
		cpf.HttpProfile.Scheme = "HTTPS"
		cpf.HttpProfile.ReqTimeout = 10
		c, err := tckms.NewClient(common.NewCredential(adminID, adminKey), "ap-guangzhou", cpf)
		if err != nil {
			t.Fatal(err)
		}
		c.WithHttpTransport(&http.Transport{TLSClientConfig: tc})
		return c
	}
	cc, ck := clientCA.issue(t, "app", false)
	good, _ := tls.X509KeyPair(cc, ck)
	rc, rk := rogueCA.issue(t, "rogue", false)
	rogue, _ := tls.X509KeyPair(rc, rk)

	c := client(&good, tls.VersionTLS12)
	cr := tckms.NewCreateKeyRequest()
	cr.Alias = common.StringPtr("tls")
	created, err := c.CreateKey(cr)
	if err != nil {
		t.Fatalf("CreateKey over mTLS: %v", err)
	}
	if err := sdkEncrypt(c, *created.Response.KeyId); err != nil {
		t.Fatalf("Encrypt over mTLS: %v", err)
	}
	if err := sdkEncrypt(client(nil, tls.VersionTLS12), *created.Response.KeyId); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	if err := sdkEncrypt(client(&rogue, tls.VersionTLS12), *created.Response.KeyId); err == nil {
		t.Fatal("a client with a certificate from another CA was served")
	}
	// kmsctl over mTLS: -ca-file, -cert-file, -key-file.
	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	caFile, certFile, keyFile := write(t, dir, "ca.pem", ca.pem), write(t, dir, "app.pem", cc), write(t, dir, "app.key", ck)
	out, err := ctl("-ca-file", caFile, "-cert-file", certFile, "-key-file", keyFile, "encrypt", "-key-id", *created.Response.KeyId, "-plaintext", "over mTLS")
	if err != nil {
		t.Fatalf("kmsctl encrypt over mTLS: %v\n%s", err, out)
	}
	fields := strings.Fields(out)
	if len(fields) == 0 {
		t.Fatalf("kmsctl encrypt printed nothing")
	}
	if out, err := ctl("-ca-file", caFile, "-cert-file", certFile, "-key-file", keyFile, "decrypt", "-blob", fields[len(fields)-1]); err != nil || !strings.Contains(out, "over mTLS") {
		t.Fatalf("kmsctl decrypt over mTLS: %v\n%s", err, out)
	}
	if out, err := ctl("-ca-file", caFile, "encrypt", "-key-id", *created.Response.KeyId, "-plaintext", "x"); err == nil {
		t.Fatalf("kmsctl without a client certificate was served:\n%s", out)
	}
	if out, err := ctl("-cert-file", certFile, "-key-file", keyFile, "encrypt", "-key-id", *created.Response.KeyId, "-plaintext", "x"); err == nil {
		t.Fatalf("kmsctl trusted kmsd's certificate without its CA:\n%s", out)
	}

	// TLS 1.1 and older are refused.
	conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: roots, MaxVersion: tls.VersionTLS11, Certificates: []tls.Certificate{good}})
	if err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}
	// Plain HTTP on the TLS port is not served.
	if resp, err := http.Get("http://" + host + "/healthz"); err == nil && resp.StatusCode == http.StatusOK {
		t.Fatal("plain HTTP served on the TLS listener")
	}

	// SIGHUP reloads a new certificate without dropping the service.
	ca2 := newCA(t, "server CA 2")
	sc2, sk2 := ca2.issue(t, "kmsd", true)
	write(t, dir, "server.pem", sc2)
	write(t, dir, "server.key", sk2)
	s.cmd.Process.Signal(syscall.SIGHUP)
	roots2 := x509.NewCertPool()
	roots2.AppendCertsFromPEM(ca2.pem)
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := tls.Dial("tcp", host, &tls.Config{RootCAs: roots2, Certificates: []tls.Certificate{good}})
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the reloaded certificate is not served: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestPlainHTTPRefusedOnAPublicAddress(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	cmd := exec.Command(filepath.Join(binDir, "kmsd"), "check-config")
	cmd.Env = append(kmsdEnv(tok, t.TempDir()), "KMSD_ADDR=0.0.0.0:0")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "not a loopback address") {
		t.Fatalf("check-config: %v\n%s", err, out)
	}
	cmd = exec.Command(filepath.Join(binDir, "kmsd"), "check-config", "-config", "../../kmsd.example.yaml")
	cmd.Env = kmsdEnv(tok, t.TempDir())
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "configuration OK") {
		t.Fatalf("check-config of the example: %v\n%s", err, out)
	}
}

func TestHealthReadinessAndMetrics(t *testing.T) {
	s, _, _ := newServer(t)
	key := s.createKey("metrics")
	s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("m")}})
	for path, want := range map[string]int{"/healthz": 200, "/readyz": 200} {
		resp, err := http.Get(s.url + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("%s: HTTP %d %s", path, resp.StatusCode, body)
		}
		if path == "/readyz" && (!strings.Contains(string(body), `"token":"ok"`) || !strings.Contains(string(body), `"store":"ok"`)) {
			t.Fatalf("/readyz: %s", body)
		}
	}
	resp, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`kmsd_requests_total{action="Encrypt",code="0",protocol="legacy"} 1`,
		`kmsd_request_duration_seconds_bucket{action="Encrypt",protocol="legacy"`,
		`kmsd_requests_in_flight`,
		"\nkmsd_hsm_working_copies 2\n", // the CMK used once, and the credential KEK used at start-up
		`kmsd_hsm_call_duration_seconds_bucket{function="C_Encrypt"`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(string(body), adminKey) {
		t.Fatal("/metrics shows a SecretKey")
	}
}

func TestAuditTrail(t *testing.T) {
	s, _, data := newServer(t)
	key := s.createKey("audited")
	secret := "audit-plaintext-canary"
	enc := s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64(secret)}, "encryptionContext": {`{"tenant":"ctx-canary"}`}})
	s.mustOK(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {enc.CiphertextBlob}, "encryptionContext": {`{"tenant":"ctx-canary"}`}})
	s.call(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {"nope"}, "plaintext": {b64("x")}})
	s.stop()

	path := filepath.Join(data, "audit.log")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{secret, b64(secret), enc.CiphertextBlob, "ctx-canary", adminKey} {
		if strings.Contains(string(raw), leak) {
			t.Fatalf("the audit trail holds %q", leak)
		}
	}
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(string(raw)))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("not JSON: %s", sc.Text())
		}
		lines = append(lines, m)
	}
	var sawEncrypt bool
	for _, m := range lines {
		if m["action"] == "Encrypt" && m["code"] == "0" {
			sawEncrypt = true
			if m["keyId"] != key || m["keyVersion"] != float64(1) || m["secretId"] != adminID || m["protocol"] != "legacy" || m["requestId"] == "" {
				t.Fatalf("Encrypt line %v", m)
			}
		}
	}
	if !sawEncrypt || lines[len(lines)-1]["code"] != "4000" {
		t.Fatalf("lines %v", lines)
	}

	verify := func(file string) (string, error) {
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), "audit", "verify", file)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := verify(path); err != nil {
		t.Fatalf("verify of an intact trail: %v\n%s", err, out)
	}
	tampered := strings.Replace(string(raw), `"action":"Decrypt"`, `"action":"Encrypt"`, 1)
	tp := write(t, t.TempDir(), "tampered.log", []byte(tampered))
	if out, err := verify(tp); err == nil || !strings.Contains(out, "line") {
		t.Fatalf("verify of a tampered trail passed:\n%s", out)
	}
}

func TestUnwritableAuditRefusesRequests(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	s := startKMSD(t, append(env, "KMSD_AUDIT_FILE=/dev/full"))
	r := s.call(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {"unaudited"}})
	if r.Code != 6000 || !strings.Contains(r.Message, "audit") {
		t.Fatalf("CreateKey with a full audit device: %d %q", r.Code, r.Message)
	}
	r = s.call(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {"00000000-0000-4000-8000-000000000000"}, "plaintext": {b64("x")}})
	if r.Code != 6000 || r.CiphertextBlob != "" {
		t.Fatalf("Encrypt with a full audit device: %d %q", r.Code, r.Message)
	}
}

func TestLimits(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	s := startKMSD(t, append(env, "KMSD_RATE_PER_CREDENTIAL=5", "KMSD_BURST_PER_CREDENTIAL=5", "KMSD_MAX_BODY_BYTES=2048", "KMSD_READ_HEADER_TIMEOUT=500ms"))

	t.Run("rate per credential", func(t *testing.T) {
		codes := map[int]int{}
		for i := 0; i < 20; i++ {
			codes[s.call(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {"AAAA"}}).Code]++
		}
		if codes[4400] == 0 || codes[4000] == 0 {
			t.Fatalf("codes %v: want some 4000 (served) and some 4400 (over the limit)", codes)
		}
		r := s.tc3(t, tc3Request{action: "Decrypt", body: `{"CiphertextBlob":"AAAA"}`})
		if r.code() != "RequestLimitExceeded" {
			t.Fatalf("API 3.0 over the limit: %q", r.code())
		}
	})
	t.Run("oversized body", func(t *testing.T) {
		r := s.call(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {strings.Repeat("A", 4096)}})
		if r.Code != 4000 || !strings.Contains(r.Message, "larger than") {
			t.Fatalf("%d %q", r.Code, r.Message)
		}
	})
	t.Run("slow request headers", func(t *testing.T) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(s.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.Write([]byte("POST /v2/index.php HTTP/1.1\r\nHost: x\r\n")) // never finishes
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		buf := make([]byte, 512)
		_, err = conn.Read(buf)
		for err == nil {
			_, err = conn.Read(buf)
		}
		if time.Since(start) > 9*time.Second {
			t.Fatal("a request that never finished its headers kept the connection open")
		}
	})
}
