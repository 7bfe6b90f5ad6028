package main_test

// End-to-end tests: the real kmsd binary on a real throwaway SoftHSM2 token,
// called over HTTP on a free loopback port.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"hsmkms/softhsm"
	"hsmkms/tcsign"
)

var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kmsd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	for _, cmd := range []string{"kmsd", "kmsctl"} {
		out, err := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, cmd), "hsmkms/cmd/"+cmd).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "building %s: %v\n%s", cmd, err, out)
			os.Exit(1)
		}
	}
	code := m.Run()
	if code == 0 {
		// No plaintext, data key or SecretKey used anywhere in the run
		// reached a log or an audit trail.
		if err := checkLeaks(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running kmsd process.
type server struct {
	t      *testing.T
	cmd    *exec.Cmd
	url    string
	stderr *syncBuffer
	done   chan error
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The administrator credential every test server is bootstrapped with.
const (
	adminID  = "AKIDe2eadmin00000000000000000000000"
	adminKey = "e2eAdminSecretKey000000000000000"
)

func init() { secret(adminKey) }

func kmsdEnv(tok softhsm.Token, dataDir string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TENCENTCLOUD_") && !strings.HasPrefix(kv, "KMSD_") {
			env = append(env, kv)
		}
	}
	return append(env, append(tok.Env(),
		"KMSD_PKCS11_MODULE="+tok.Module,
		"KMSD_TOKEN_LABEL="+tok.Label,
		"KMSD_PIN="+tok.PIN,
		"KMSD_DATA_DIR="+dataDir,
		"KMSD_ADDR=127.0.0.1:0",
	)...)
}

// bootstrap imports the administrator credential, as make run does.
func bootstrap(t *testing.T, env []string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kmsd"), "credentials", "import", "-admin", "-name", "e2e-admin", "-if-none")
	cmd.Env = append(env, "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kmsd credentials import: %v\n%s", err, out)
	}
	time.Sleep(100 * time.Millisecond) // SoftHSM2: processes opening one token directory at the same instant can fail
}

// startKMSD starts kmsd and waits until it listens.
func startKMSD(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	s, exited := launch(t, filepath.Join(binDir, "kmsd"), env, args...)
	if exited != nil {
		t.Fatalf("kmsd exited before listening: %v\n%s", exited, s.stderr.String())
	}
	return s
}

// launch starts the kmsd binary bin and waits until it listens (exited is
// nil) or exits first (exited is its wait error, and s.done is drained).
// It fails the test if neither happens within 30 s.
func launch(t *testing.T, bin string, env []string, args ...string) (s *server, exited error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	pr, pw := io.Pipe()
	buf := &syncBuffer{}
	cmd.Stderr = io.MultiWriter(buf, pw) // buf first: once the scanner sees a line, buf has it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s = &server{t: t, cmd: cmd, stderr: buf, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		watchOutput(env, buf.String())
		s.done <- err
		pw.Close()
	}()
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
	select {
	case a := <-addr:
		s.url = "http://" + a
	case err := <-s.done:
		if err == nil {
			err = errors.New("exit status 0")
		}
		return s, err
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("%s did not listen within 30s\n%s", filepath.Base(bin), buf.String())
	}
	t.Cleanup(func() { s.stop() })
	return s, nil
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			s.t.Errorf("kmsd exited with %v after SIGTERM\n%s", err, s.stderr.String())
		}
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		s.t.Errorf("kmsd did not stop within 30s after SIGTERM")
	}
}

type legacyReply struct {
	Code           int    `json:"code"`
	Message        string `json:"message"`
	RequestID      string `json:"requestId"`
	KeyID          string `json:"keyId"`
	CiphertextBlob string `json:"ciphertextBlob"`
	Plaintext      string `json:"plaintext"`
	KeyMetadata    struct {
		KeyID      string `json:"keyId"`
		Alias      string `json:"alias"`
		CreateTime int64  `json:"createTime"`
		KeyState   string `json:"keyState"`
		KeyUsage   string `json:"keyUsage"`
	} `json:"keyMetadata"`
}

var nonce atomic.Uint64

// signLegacy adds the common parameters and a HmacSHA256 signature made with
// the credential (id, key) for the server's host.
func (s *server) signLegacy(method string, v url.Values, id, key string) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = vs
	}
	out.Set("SecretId", id)
	out.Set("Timestamp", strconv.FormatInt(time.Now().Unix(), 10))
	out.Set("Nonce", strconv.FormatUint(nonce.Add(1)+uint64(time.Now().UnixNano()%1e6)*1e6, 10))
	out.Set("SignatureMethod", "HmacSHA256")
	out.Set("RequestClient", "SDK_PYTHON_1.0")
	var ps []tcsign.Param
	for k, vs := range out {
		ps = append(ps, tcsign.Param{Name: k, Value: vs[0]})
	}
	host := strings.TrimPrefix(s.url, "http://")
	out.Set("Signature", tcsign.V1Sign(key, "HmacSHA256", tcsign.V1StringToSign(method, host, "/v2/index.php", ps)))
	return out
}

// call signs a legacy request as the administrator, sends it by GET or POST
// and decodes the reply, checking the envelope every legacy SDK relies on.
func (s *server) call(method string, v url.Values) legacyReply {
	s.t.Helper()
	return s.send(method, s.signLegacy(method, v, adminID, adminKey))
}

// send sends already-signed legacy parameters.
func (s *server) send(method string, v url.Values) legacyReply {
	s.t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodGet {
		resp, err = http.Get(s.url + "/v2/index.php?" + v.Encode())
	} else {
		resp, err = http.Post(s.url+"/v2/index.php", "application/x-www-form-urlencoded", strings.NewReader(v.Encode()))
	}
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		s.t.Fatalf("HTTP %d: %s", resp.StatusCode, body)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		s.t.Fatalf("reply is not JSON: %s", body)
	}
	for _, k := range []string{"code", "message", "requestId"} {
		if _, ok := raw[k]; !ok {
			s.t.Fatalf("reply lacks %q: %s", k, body)
		}
	}
	var r legacyReply
	if err := json.Unmarshal(body, &r); err != nil {
		s.t.Fatalf("code is not an integer: %s", body)
	}
	if r.RequestID == "" || resp.Header.Get("X-Request-Id") != r.RequestID {
		s.t.Fatalf("requestId %q / header %q", r.RequestID, resp.Header.Get("X-Request-Id"))
	}
	return r
}

func (s *server) mustOK(method string, v url.Values) legacyReply {
	s.t.Helper()
	r := s.call(method, v)
	if r.Code != 0 {
		s.t.Fatalf("%s: code %d %q", v.Get("Action"), r.Code, r.Message)
	}
	return r
}

func (s *server) createKey(alias string) string {
	s.t.Helper()
	r := s.mustOK(http.MethodPost, url.Values{"Action": {"CreateKey"}, "alias": {alias}, "description": {"e2e"}})
	if _, err := uuid.Parse(r.KeyMetadata.KeyID); err != nil {
		s.t.Fatalf("keyId %q is not a UUID", r.KeyMetadata.KeyID)
	}
	return r.KeyMetadata.KeyID
}

// b64 base64-encodes a plaintext, which the leak check then looks for in
// every log and audit trail of the run.
func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(secret(s))) }

func newServer(t *testing.T) (*server, softhsm.Token, string) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	return startKMSD(t, env), tok, data
}

func TestRoundTripGETAndPOST(t *testing.T) {
	s, _, _ := newServer(t)
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			s.t = t
			created := s.mustOK(method, url.Values{"Action": {"CreateKey"}, "alias": {"rt-" + method}, "keyUsage": {"ENCRYPT/DECRYPT"}})
			md := created.KeyMetadata
			if md.Alias != "rt-"+method || md.KeyState != "Enabled" || md.KeyUsage != "ENCRYPT/DECRYPT" || md.CreateTime == 0 {
				t.Fatalf("keyMetadata %+v", md)
			}
			pt := "Hello, Tencent KMS! 🔐"
			enc := s.mustOK(method, url.Values{"Action": {"Encrypt"}, "keyId": {md.KeyID}, "plaintext": {b64(pt)}, "encryptionContext": {`{"app":"billing"}`}})
			if enc.CiphertextBlob == "" || enc.KeyID != md.KeyID {
				t.Fatalf("encrypt reply %+v", enc)
			}
			dec := s.mustOK(method, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {enc.CiphertextBlob}, "encryptionContext": {`{"app":"billing"}`}})
			if dec.Plaintext != b64(pt) || dec.KeyID != md.KeyID {
				t.Fatalf("decrypt reply %+v", dec)
			}
			// Two encryptions of one plaintext differ.
			enc2 := s.mustOK(method, url.Values{"Action": {"Encrypt"}, "keyId": {md.KeyID}, "plaintext": {b64(pt)}, "encryptionContext": {`{"app":"billing"}`}})
			if enc2.CiphertextBlob == enc.CiphertextBlob {
				t.Fatal("two encryptions gave the same blob")
			}
		})
	}
}

func TestEncryptionContext(t *testing.T) {
	s, _, _ := newServer(t)
	key := s.createKey("ctx")
	enc := s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("secret")}, "encryptionContext": {`{"a":"1","b":"2"}`}})
	dec := func(ec string, omit bool) legacyReply {
		v := url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {enc.CiphertextBlob}}
		if !omit {
			v.Set("encryptionContext", ec)
		}
		return s.call(http.MethodPost, v)
	}
	if r := dec(`{ "b" : "2", "a":"1" }`, false); r.Code != 0 || r.Plaintext != b64("secret") {
		t.Fatalf("context in another key order: code %d %q", r.Code, r.Message)
	}
	for _, tc := range []struct {
		name, ec string
		omit     bool
	}{
		{"changed value", `{"a":"1","b":"3"}`, false},
		{"changed key", `{"a":"1","c":"2"}`, false},
		{"extra pair", `{"a":"1","b":"2","c":"3"}`, false},
		{"missing", "", true},
		{"empty object", `{}`, false},
	} {
		if r := dec(tc.ec, tc.omit); r.Code != 5100 || r.Plaintext != "" {
			t.Errorf("%s: code %d %q, want 5100 and no plaintext", tc.name, r.Code, r.Message)
		}
	}
}

func TestErrorCodes(t *testing.T) {
	s, _, _ := newServer(t)
	key := s.createKey("errs")
	good := s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}})
	big := base64.StdEncoding.EncodeToString(make([]byte, 4097))
	max := base64.StdEncoding.EncodeToString(make([]byte, 4096))
	tests := []struct {
		name   string
		v      url.Values
		code   int
		prefix string
	}{
		{"plaintext not base64", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {"not base64!"}}, 4590, "(10690)plaintext is not encoded with base64"},
		{"illegal context: not JSON", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}, "encryptionContext": {"nope"}}, 4540, "(10640)illegal encryptionContext"},
		{"illegal context: number value", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}, "encryptionContext": {`{"a":1}`}}, 4540, "(10640)"},
		{"illegal context: duplicate key", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}, "encryptionContext": {`{"a":"1","a":"2"}`}}, 4540, "(10640)"},
		{"illegal context: too long", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}, "encryptionContext": {`{"a":"` + strings.Repeat("x", 1100) + `"}`}}, 4540, "(10640)"},
		{"illegal context on decrypt", url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {good.CiphertextBlob}, "encryptionContext": {"[]"}}, 4540, "(10640)"},
		{"plaintext too long", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {big}}, 4560, "(10660)encryption failed, please check input parameters"},
		{"missing keyId", url.Values{"Action": {"Encrypt"}, "plaintext": {b64("x")}}, 4000, "missing parameter: keyId"},
		{"missing plaintext", url.Values{"Action": {"Encrypt"}, "keyId": {key}}, 4000, "missing parameter: plaintext"},
		{"missing blob", url.Values{"Action": {"Decrypt"}}, 4000, "missing parameter: ciphertextBlob"},
		{"missing action", url.Values{"keyId": {key}}, 4000, "missing parameter: Action"},
		{"unknown action", url.Values{"Action": {"Frobnicate"}}, 6100, "action"},
		{"unknown parameter", url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64("x")}, "KeyId": {key}}, 4000, "unknown parameter"},
		{"malformed keyId", url.Values{"Action": {"Encrypt"}, "keyId": {"../../etc"}, "plaintext": {b64("x")}}, 4000, "invalid keyId"},
		{"unknown key", url.Values{"Action": {"Encrypt"}, "keyId": {uuid.NewString()}, "plaintext": {b64("x")}}, 5000, "key does not exist"},
		{"malformed blob", url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {"AAAA"}}, 4000, "invalid ciphertextBlob"},
		{"blob not base64", url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {"%%%"}}, 4000, "invalid ciphertextBlob"},
		{"alias taken", url.Values{"Action": {"CreateKey"}, "alias": {"errs"}}, 5100, "alias already exists"},
		{"alias invalid", url.Values{"Action": {"CreateKey"}, "alias": {"bad alias!"}}, 4000, "invalid alias"},
		{"missing alias", url.Values{"Action": {"CreateKey"}}, 4000, "missing parameter: alias"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.t = t
			r := s.call(http.MethodPost, tt.v)
			if r.Code != tt.code || !strings.HasPrefix(r.Message, tt.prefix) {
				t.Fatalf("code %d %q, want %d %q...", r.Code, r.Message, tt.code, tt.prefix)
			}
		})
	}
	s.t = t
	// The largest plaintext is accepted.
	s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {max}})
}

func TestTamperedBlob(t *testing.T) {
	s, _, _ := newServer(t)
	keyA, keyB := s.createKey("tamper-a"), s.createKey("tamper-b")
	enc := s.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {keyA}, "plaintext": {b64("pay 100")}})
	raw, err := base64.StdEncoding.DecodeString(enc.CiphertextBlob)
	if err != nil {
		t.Fatal(err)
	}
	idA, idB := uuid.MustParse(keyA), uuid.MustParse(keyB)
	if !bytes.Equal(raw[1:17], idA[:]) {
		t.Fatalf("envelope does not carry key A's id at bytes 1..16")
	}
	mutate := func(f func(b []byte)) string {
		b := bytes.Clone(raw)
		f(b)
		return base64.StdEncoding.EncodeToString(b)
	}
	tests := []struct {
		name string
		blob string
		code int
	}{
		{"relabelled to key B", mutate(func(b []byte) { copy(b[1:17], idB[:]) }), 5100},
		{"version changed", mutate(func(b []byte) { b[20] = 2 }), 4000},
		{"iv bit flipped", mutate(func(b []byte) { b[22] ^= 1 }), 5100},
		{"ciphertext bit flipped", mutate(func(b []byte) { b[34] ^= 0x80 }), 5100},
		{"tag bit flipped", mutate(func(b []byte) { b[len(b)-1] ^= 1 }), 5100},
		{"truncated", mutate(func(b []byte) {})[:40], 4000},
		{"unknown format version", mutate(func(b []byte) { b[0] = 9 }), 4000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.t = t
			r := s.call(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {tt.blob}})
			if r.Code != tt.code || r.Plaintext != "" {
				t.Fatalf("code %d %q plaintext %q, want code %d", r.Code, r.Message, r.Plaintext, tt.code)
			}
		})
	}
}

func TestRestartKeepsKeysAndCiphertexts(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	data := t.TempDir()
	env := kmsdEnv(tok, data)
	bootstrap(t, env)
	s1 := startKMSD(t, env)
	type item struct{ key, blob, pt string }
	var items []item
	for i := 0; i < 3; i++ {
		key := s1.createKey(fmt.Sprintf("restart-%d", i))
		pt := fmt.Sprintf("payload %d", i)
		enc := s1.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {key}, "plaintext": {b64(pt)}, "encryptionContext": {`{"i":"` + fmt.Sprint(i) + `"}`}})
		items = append(items, item{key, enc.CiphertextBlob, pt})
	}
	s1.stop()
	time.Sleep(200 * time.Millisecond) // SoftHSM2: processes opening one token directory at the same instant can fail

	s2 := startKMSD(t, env)
	for i, it := range items {
		dec := s2.mustOK(http.MethodPost, url.Values{"Action": {"Decrypt"}, "ciphertextBlob": {it.blob}, "encryptionContext": {`{"i":"` + fmt.Sprint(i) + `"}`}})
		if dec.Plaintext != b64(it.pt) || dec.KeyID != it.key {
			t.Fatalf("after restart: %+v", dec)
		}
		s2.mustOK(http.MethodPost, url.Values{"Action": {"Encrypt"}, "keyId": {it.key}, "plaintext": {b64("again")}})
	}
}

func TestStartupFailuresAreClear(t *testing.T) {
	tok := softhsm.NewTokenNoEnv(t)
	tests := []struct {
		name string
		env  func([]string) []string
		want string
	}{
		{"wrong PIN", func(e []string) []string { return append(e, "KMSD_PIN=9999") }, "login"},
		{"missing token", func(e []string) []string { return append(e, "KMSD_TOKEN_LABEL=no-such-token") }, "no-such-token"},
		{"no PIN", func(e []string) []string { return append(e, "KMSD_PIN=") }, "KMSD_PIN"},
		{"no module", func(e []string) []string { return append(e, "KMSD_PKCS11_MODULE=") }, "-module"},
		// SoftHSM2 refuses any C_Initialize arguments, NSS softoken needs them.
		{"init args", func(e []string) []string {
			if tok.InitArgs != "" {
				return append(e, "KMSD_PKCS11_INIT_ARGS=")
			}
			return append(e, "KMSD_PKCS11_INIT_ARGS=configdir='sql:/nonexistent'")
		}, "pkcs11.init_args"},
		{"token URI matching nothing", func(e []string) []string {
			return append(e, "KMSD_TOKEN_LABEL=", "KMSD_TOKEN_URI=pkcs11:token="+tok.Label+";serial=no-such-serial")
		}, "serial=no-such-serial"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(filepath.Join(binDir, "kmsd"))
			cmd.Env = tt.env(kmsdEnv(tok, t.TempDir()))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			done := make(chan struct{})
			var out []byte
			var err error
			go func() { out, err = cmd.CombinedOutput(); close(done) }()
			select {
			case <-done:
			case <-ctx.Done():
				cmd.Process.Kill()
				t.Fatal("kmsd did not exit")
			}
			if err == nil {
				t.Fatalf("kmsd started; output:\n%s", out)
			}
			if !strings.Contains(strings.ToLower(string(out)), strings.ToLower(tt.want)) {
				t.Fatalf("message does not mention %q:\n%s", tt.want, out)
			}
			if strings.Contains(string(out), tok.PIN) && tt.name != "no PIN" {
				t.Fatalf("PIN leaked in output:\n%s", out)
			}
		})
	}
}

func TestKmsctlReadmeExample(t *testing.T) {
	s, _, _ := newServer(t)
	ctl := func(stdin string, args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(binDir, "kmsctl"), append([]string{"-endpoint", s.url}, args...)...)
		cmd.Env = append(os.Environ(), "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.Output()
		if err != nil {
			var stderr []byte
			if ee, ok := err.(*exec.ExitError); ok {
				stderr = ee.Stderr
			}
			t.Fatalf("kmsctl %v: %v\n%s", args, err, stderr)
		}
		return string(out)
	}
	out := ctl("", "create-key", "-alias", "readme", "-description", "example")
	var keyID string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "keyId" {
			keyID = f[1]
		}
	}
	if keyID == "" {
		t.Fatalf("no keyId in %q", out)
	}
	blob := strings.TrimSpace(ctl("hello from stdin\n", "encrypt", "-key-id", keyID, "-context", `{"team":"pay"}`, "-in", "-"))
	if got := ctl(blob, "decrypt", "-context", `{"team":"pay"}`, "-in", "-"); got != "hello from stdin\n" {
		t.Fatalf("decrypt printed %q", got)
	}
}
