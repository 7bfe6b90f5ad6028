package consumers

// Two real consumers of the AWS KMS API against the real kmsd, each with a
// least-privilege credential: Vault/OpenBao's awskms seal wrapper
// (github.com/hashicorp/go-kms-wrapping/wrappers/awskms/v2 v2.0.11, with
// its endpoint option) and SOPS's AWS KMS key source
// (github.com/getsops/sops/v3 v3.13.3, pointed at kmsd with
// AWS_ENDPOINT_URL_KMS as its users do). They live in this nested module
// because SOPS brings the Google, Azure and Vault clients with it.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	kmssdk "github.com/aws/aws-sdk-go-v2/service/kms"
	sopskms "github.com/getsops/sops/v3/kms"
	wrapping "github.com/hashicorp/go-kms-wrapping/v2"
	"github.com/hashicorp/go-kms-wrapping/wrappers/awskms/v2"

	"hsmkms/softhsm"
	"hsmkms/tcsign"
)

const (
	region  = "us-east-1"
	account = "111122223333"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmsd-consumers-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// kmsd is built in the main module, with its own dependencies.
	build := exec.Command("go", "build", "-o", filepath.Join(dir, "kmsd"), "./cmd/kmsd")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building kmsd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cred is a credential: its SecretId (access key id) and SecretKey.
type cred struct{ id, key string }

// kmsd runs kmsd on a fresh token with the AWS API on and an
// administrator, and returns its URL and the administrator.
func kmsd(t *testing.T) (string, cred) {
	t.Helper()
	tok := softhsm.NewTokenNoEnv(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TENCENTCLOUD_") && !strings.HasPrefix(kv, "KMSD_") && !strings.HasPrefix(kv, "AWS_") {
			env = append(env, kv)
		}
	}
	env = append(env, tok.Env()...)
	env = append(env, "KMSD_PKCS11_MODULE="+tok.Module, "KMSD_TOKEN_LABEL="+tok.Label, "KMSD_PIN="+tok.PIN,
		"KMSD_DATA_DIR="+t.TempDir(), "KMSD_ADDR=127.0.0.1:0", "KMSD_AWS_REGIONS="+region, "KMSD_AWS_ACCOUNT_ID="+account)
	admin := cred{"AKIDconsumersadmin000000000000000", "consumersAdminSecretKey000000000"}
	imp := exec.Command(filepath.Join(binDir, "kmsd"), "credentials", "import", "-admin", "-name", "admin")
	imp.Env = append(env, "TENCENTCLOUD_SECRET_ID="+admin.id, "TENCENTCLOUD_SECRET_KEY="+admin.key)
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("kmsd credentials import: %v\n%s", err, out)
	}

	cmd := exec.Command(filepath.Join(binDir, "kmsd"))
	cmd.Env = env
	pr, pw := io.Pipe()
	var log bytes.Buffer
	cmd.Stderr = io.MultiWriter(&log, pw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				addr <- line.Addr
			}
		}
		io.Copy(io.Discard, pr)
	}()
	var url string
	select {
	case a := <-addr:
		url = "http://" + a
	case err := <-done:
		t.Fatalf("kmsd exited: %v\n%s", err, log.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("kmsd did not listen within 30s")
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("kmsd exited with %v", err)
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Errorf("kmsd did not stop")
		}
	})
	return url, admin
}

// createCredential makes a credential with a policy of statements through
// API 3.0 (CreateCredential, TC3-signed by the administrator).
func createCredential(t *testing.T, url string, admin cred, statements string) cred {
	t.Helper()
	body, _ := json.Marshal(map[string]string{"Name": "consumer", "Policy": `{"version":"2.0","statement":[` + statements + `]}`})
	ts := time.Now().Unix()
	req, err := http.NewRequest(http.MethodPost, url+"/", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", "CreateCredential")
	req.Header.Set("X-TC-Version", "2019-01-18")
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
	req.Header.Set("Authorization", tcsign.SignTC3(admin.id, admin.key, "kms", http.MethodPost, strings.TrimPrefix(url, "http://"), "application/json", "", ts, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out struct {
		Response struct {
			SecretId, SecretKey string
			Error               *struct{ Code, Message string }
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response.Error != nil || out.Response.SecretId == "" {
		t.Fatalf("CreateCredential: %v %+v", err, out.Response.Error)
	}
	return cred{out.Response.SecretId, out.Response.SecretKey}
}

// newKey makes a key named alias/<alias> as the administrator and returns
// its id.
func newKey(t *testing.T, url string, admin cred, alias string) string {
	t.Helper()
	c := kmssdk.New(kmssdk.Options{Region: region, BaseEndpoint: aws.String(url), Retryer: aws.NopRetryer{},
		Credentials: credentials.NewStaticCredentialsProvider(admin.id, admin.key, "")})
	ctx := context.Background()
	k, err := c.CreateKey(ctx, &kmssdk.CreateKeyInput{Description: aws.String("for " + alias)})
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if _, err := c.CreateAlias(ctx, &kmssdk.CreateAliasInput{AliasName: aws.String("alias/" + alias), TargetKeyId: k.KeyMetadata.KeyId}); err != nil {
		t.Fatalf("CreateAlias: %v", err)
	}
	return *k.KeyMetadata.KeyId
}

// isolateAWSEnv keeps the AWS SDKs away from the machine's AWS
// configuration and credentials.
func isolateAWSEnv(t *testing.T) {
	dir := t.TempDir()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "AWS_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

// The Vault/OpenBao awskms seal: SetConfig (which describes the key),
// Encrypt (a data key under the KMS key) and Decrypt, with only
// kms:Encrypt, kms:Decrypt and kms:DescribeKey on its key.
func TestVaultAWSKMSSeal(t *testing.T) {
	isolateAWSEnv(t)
	url, admin := kmsd(t)
	id := newKey(t, url, admin, "vault-unseal")
	seal := createCredential(t, url, admin, `{"effect":"allow","action":["kms:Encrypt","kms:Decrypt","kms:DescribeKey"],"resource":"`+id+`"}`)

	w := awskms.NewWrapper()
	_, err := w.SetConfig(context.Background(),
		wrapping.WithKeyId("alias/vault-unseal"),
		awskms.WithRegion(region),
		awskms.WithEndpoint(url),
		awskms.WithAccessKey(seal.id),
		awskms.WithSecretKey(seal.key),
		awskms.WithDisallowEnvVars(true),
	)
	if err != nil {
		t.Fatalf("SetConfig: %v", err)
	}
	if got, _ := w.KeyId(context.Background()); got != id {
		t.Fatalf("the wrapper's key is %q, want %s (DescribeKey of the alias)", got, id)
	}
	pt := []byte("the root key of a Vault barrier")
	blob, err := w.Encrypt(context.Background(), pt)
	if err != nil {
		t.Fatalf("Encrypt: %v", err)
	}
	if blob.KeyInfo == nil || !strings.HasSuffix(blob.KeyInfo.KeyId, id) {
		t.Fatalf("Encrypt's key info %+v", blob.KeyInfo)
	}
	got, err := w.Decrypt(context.Background(), blob)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("Decrypt: %v", err)
	}
	// The seal's credential can do nothing else.
	other := awskms.NewWrapper()
	if _, err := other.SetConfig(context.Background(), wrapping.WithKeyId(newKey(t, url, admin, "other")), awskms.WithRegion(region),
		awskms.WithEndpoint(url), awskms.WithAccessKey(seal.id), awskms.WithSecretKey(seal.key), awskms.WithDisallowEnvVars(true)); err == nil || !strings.Contains(err.Error(), "AccessDenied") {
		t.Fatalf("SetConfig on a key outside the seal's policy: %v", err)
	}
}

// SOPS's AWS KMS key source: encrypt and decrypt a data key with an
// encryption context, with only kms:Encrypt and kms:Decrypt on its key.
func TestSOPSAWSKMSKeySource(t *testing.T) {
	isolateAWSEnv(t)
	url, admin := kmsd(t)
	id := newKey(t, url, admin, "sops")
	sops := createCredential(t, url, admin, `{"effect":"allow","action":["kms:Encrypt","kms:Decrypt"],"resource":"`+id+`"}`)
	t.Setenv("AWS_ENDPOINT_URL_KMS", url)
	t.Setenv("AWS_ACCESS_KEY_ID", sops.id)
	t.Setenv("AWS_SECRET_ACCESS_KEY", sops.key)

	ecx := sopskms.ParseKMSContext("team:payments,env:prod")
	for _, arn := range []string{
		"arn:aws:kms:" + region + ":" + account + ":key/" + id,
		"arn:aws:kms:" + region + ":" + account + ":alias/sops",
	} {
		k := sopskms.NewMasterKeyFromArn(arn, ecx, "")
		dataKey := []byte("0123456789abcdef0123456789abcdef")
		if err := k.Encrypt(dataKey); err != nil {
			t.Fatalf("Encrypt with %s: %v", arn, err)
		}
		// A fresh key source, as sops decrypt makes from the file's
		// metadata.
		d := sopskms.NewMasterKeyFromArn(arn, ecx, "")
		d.EncryptedKey = k.EncryptedKey
		got, err := d.Decrypt()
		if err != nil || !bytes.Equal(got, dataKey) {
			t.Fatalf("Decrypt with %s: %v", arn, err)
		}
		// Another encryption context does not open it.
		w := sopskms.NewMasterKeyFromArn(arn, sopskms.ParseKMSContext("team:payments,env:dev"), "")
		w.EncryptedKey = k.EncryptedKey
		if _, err := w.Decrypt(); err == nil || !strings.Contains(err.Error(), "InvalidCiphertext") {
			t.Fatalf("Decrypt with another context: %v", err)
		}
	}
}
