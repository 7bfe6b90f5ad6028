package pgtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Host is the address a throwaway server listens on; its certificate names
// it, so clients connect with sslmode=verify-full.
const Host = "127.0.0.1"

// makeCerts makes a throwaway certificate authority and a server
// certificate it signs for Host and localhost (crypto/x509, ECDSA P-256,
// valid for a day), and writes ca.crt (readable by all), server.crt and
// server.key (the server user's, mode 0600) into dir. It returns the CA
// file's path.
func makeCerts(dir string, cred *syscall.Credential) (caFile string, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	now := time.Now()
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
		return n
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "hsmkms pgtest CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return "", err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return "", err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: Host},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP(Host)},
	}, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		return "", err
	}
	caFile = filepath.Join(dir, "ca.crt")
	files := []struct {
		name, typ string
		der       []byte
		mode      os.FileMode
		server    bool
	}{
		{"ca.crt", "CERTIFICATE", caDER, 0o644, false},
		{"server.crt", "CERTIFICATE", srvDER, 0o600, true},
		{"server.key", "PRIVATE KEY", keyDER, 0o600, true},
	}
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: f.typ, Bytes: f.der}), f.mode); err != nil {
			return "", err
		}
		if err := os.Chmod(p, f.mode); err != nil { // umask
			return "", err
		}
		if f.server && cred != nil {
			if err := os.Chown(p, int(cred.Uid), int(cred.Gid)); err != nil {
				return "", err
			}
		}
	}
	return caFile, nil
}

// hbaConf admits TCP clients over TLS only: a test that connected without
// TLS would fail, not pass unencrypted.
const hbaConf = `local   all all                trust
hostssl all all 127.0.0.1/32   trust
hostssl all all ::1/128        trust
host    all all 0.0.0.0/0      reject
host    all all ::/0           reject
`
