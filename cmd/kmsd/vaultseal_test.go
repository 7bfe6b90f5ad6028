package main_test

// Vault/OpenBao auto-unseal through go-kms-wrapping's tencentcloudkms
// wrapper, reproduced: what the wrapper does (the SDK's default client
// profile, so https://kms.tencentcloudapi.com; DescribeKey at SetConfig;
// Encrypt of the base64 data key of an AES-256-GCM envelope; Decrypt of
// the CiphertextBlob kept as KeyInfo.WrappedKey) against kmsd serving a
// certificate for kms.tencentcloudapi.com from a test CA, with a dialer
// that sends kms.tencentcloudapi.com:443 to kmsd (what the Vault host's
// DNS does in the OPERATIONS.md recipe), under a credential allowed
// DescribeKey, Encrypt and Decrypt on the seal key only.
//
// The wrapper pins the monolithic SDK module v1.0.604, which the module
// proxy here does not serve; the same packages (common, common/profile,
// kms/v20190118) are used at the version this repository pins, which
// build the same requests for these three actions.

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common"
	"github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/common/profile"
	tckms "github.com/tencentcloud/tencentcloud-sdk-go/tencentcloud/kms/v20190118"
)

// issueFor returns a server certificate for the DNS name from ca.
func (ca *testCA) issueFor(t *testing.T, dns string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: dns}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSNames: []string{dns}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
}

// sealWrapper is go-kms-wrapping's tencentcloudkms.Wrapper, step for step.
type sealWrapper struct {
	keyID  string
	client *tckms.Client
}

// newSealWrapper is SetConfig: the default profile (POST, 300 s, en-US),
// NewTokenCredential with an empty token, DescribeKey.
func newSealWrapper(t *testing.T, keyID, id, key, region string, dial func(ctx context.Context, network, addr string) (net.Conn, error), roots *x509.CertPool) (*sealWrapper, error) {
	t.Helper()
	cpf := profile.NewClientProfile()
	cpf.HttpProfile.ReqMethod = "POST"
	cpf.HttpProfile.ReqTimeout = 300
	cpf.Language = "en-US"
	client, err := tckms.NewClient(common.NewTokenCredential(id, key, ""), region, cpf)
	if err != nil {
		return nil, err
	}
	// The Vault host's resolver and trust store: kms.tencentcloudapi.com
	// is kmsd, and the internal CA is trusted.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = dial
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	client.WithHttpTransport(tr)
	in := tckms.NewDescribeKeyRequest()
	in.KeyId = &keyID
	info, err := client.DescribeKey(in)
	if err != nil {
		return nil, err
	}
	if info.Response.KeyMetadata == nil || info.Response.KeyMetadata.KeyId == nil {
		t.Fatal("no key information returned")
	}
	return &sealWrapper{keyID: keyID, client: client}, nil
}

type sealBlob struct {
	ciphertext, iv []byte
	keyID          string
	wrappedKey     []byte
}

// encrypt is Wrapper.Encrypt: wrapping.EnvelopeEncrypt (AES-256-GCM under
// a random key), then KMS Encrypt of the base64 key.
func (w *sealWrapper) encrypt(t *testing.T, plaintext []byte) (*sealBlob, error) {
	t.Helper()
	dek := make([]byte, 32)
	iv := make([]byte, 12)
	rand.Read(dek)
	rand.Read(iv)
	block, _ := aes.NewCipher(dek)
	gcm, _ := cipher.NewGCM(block)
	ct := gcm.Seal(nil, iv, plaintext, nil)
	in := tckms.NewEncryptRequest()
	in.KeyId = &w.keyID
	in.Plaintext = common.StringPtr(base64.StdEncoding.EncodeToString(dek))
	out, err := w.client.Encrypt(in)
	if err != nil {
		return nil, err
	}
	return &sealBlob{ciphertext: ct, iv: iv, keyID: *out.Response.KeyId, wrappedKey: []byte(*out.Response.CiphertextBlob)}, nil
}

// decrypt is Wrapper.Decrypt.
func (w *sealWrapper) decrypt(t *testing.T, b *sealBlob) ([]byte, error) {
	t.Helper()
	in := tckms.NewDecryptRequest()
	in.CiphertextBlob = common.StringPtr(string(b.wrappedKey))
	out, err := w.client.Decrypt(in)
	if err != nil {
		return nil, err
	}
	dek, err := base64.StdEncoding.DecodeString(*out.Response.Plaintext)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(dek)
	if err != nil {
		return nil, err
	}
	gcm, _ := cipher.NewGCM(block)
	return gcm.Open(nil, b.iv, b.ciphertext, nil)
}

func TestVaultAutoUnsealSequence(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "internal CA")
	sc, sk := ca.issueFor(t, "kms.tencentcloudapi.com")
	s, _ := startEdgeServer(t, "KMSD_TLS_CERT_FILE="+write(t, dir, "server.pem", sc), "KMSD_TLS_KEY_FILE="+write(t, dir, "server.key", sk))
	kmsdAddr := strings.TrimPrefix(s.url, "http://")
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.pem)
	var dialed []string
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		dialed = append(dialed, addr)
		if addr == "kms.tencentcloudapi.com:443" {
			addr = kmsdAddr
		}
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, addr)
	}

	// The operator's preparation: the seal key and a least-privilege
	// credential (OPERATIONS.md, "Vault/OpenBao auto-unseal").
	adm := s.sdkCred(t, adminID, adminKey)
	cpf := profile.NewClientProfile()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = dial
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	adm.common = common.NewCommonClient(common.NewCredential(adminID, adminKey), "ap-guangzhou", cpf).WithHttpTransport(tr)
	sealKey := adm.mustCall("CreateKey", map[string]any{"Alias": "vault-seal", "Description": "Vault auto-unseal"})["KeyId"].(string)
	other := adm.mustCall("CreateKey", map[string]any{"Alias": "not-the-seal"})["KeyId"].(string)
	r := adm.mustCall("CreateCredential", map[string]any{"Name": "vault-seal",
		"Policy": `{"version":"2.0","statement":[{"effect":"allow","action":["kms:DescribeKey","kms:Encrypt","kms:Decrypt"],"resource":["` + sealKey + `"]}]}`})
	seal := struct{ id, key string }{r["SecretId"].(string), secret(r["SecretKey"].(string))}

	w, err := newSealWrapper(t, sealKey, seal.id, seal.key, "ap-guangzhou", dial, roots)
	if err != nil {
		t.Fatalf("SetConfig (DescribeKey): %s %v", sdkCode(err), err)
	}
	rootKey := []byte(secret("vault root key material, 32 bytes"))
	blob, err := w.encrypt(t, rootKey)
	if err != nil {
		t.Fatalf("Encrypt: %s %v", sdkCode(err), err)
	}
	if blob.keyID != sealKey {
		t.Fatalf("Encrypt answered KeyId %q, want %q", blob.keyID, sealKey)
	}
	got, err := w.decrypt(t, blob)
	if err != nil || string(got) != string(rootKey) {
		t.Fatalf("Decrypt: %s %v", sdkCode(err), err)
	}
	if len(dialed) == 0 || dialed[0] != "kms.tencentcloudapi.com:443" {
		t.Fatalf("the SDK's default profile dialed %v, want kms.tencentcloudapi.com:443", dialed)
	}
	// The seal credential can do nothing else.
	if _, err := newSealWrapper(t, other, seal.id, seal.key, "ap-guangzhou", dial, roots); sdkCode(err) != "UnauthorizedOperation" {
		t.Fatalf("seal credential describes another key: %s", sdkCode(err))
	}
	cr := tckms.NewCreateKeyRequest()
	cr.Alias = sp("x")
	if _, err := w.client.CreateKey(cr); sdkCode(err) != "UnauthorizedOperation" {
		t.Fatalf("seal credential creates a key: %s", sdkCode(err))
	}
	// Without the internal CA the host refuses kmsd's certificate.
	if _, err := newSealWrapper(t, sealKey, seal.id, seal.key, "ap-guangzhou", dial, x509.NewCertPool()); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("an untrusted certificate was accepted: %v", err)
	}
}
