package main

// Test harness: the real kmsd binary on a throwaway SoftHSM2 (or NSS)
// token, as cmd/kmsd's end-to-end tests start it, and the plugin served
// in-process (run) on a real unix socket, called with the gRPC client of
// k8s.io/kms's API.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	"hsmkms/kmsclient"
	"hsmkms/softhsm"
)

var binDir string

func TestMain(m *testing.M) {
	// TestSIGTERM runs this binary as the plugin itself.
	if os.Getenv("KMS_PLUGIN_TEST_MAIN") == "1" {
		main()
		return
	}
	dir, err := os.MkdirTemp("", "kms-plugin-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// -race like cmd/kmsd's tests, which share the build cache.
	if out, err := exec.Command("go", "build", "-race", "-o", filepath.Join(dir, "kmsd"), "hsmkms/cmd/kmsd").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building kmsd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// The administrator credential every test kmsd is bootstrapped with.
const (
	adminID  = "AKIDpluginadmin0000000000000000000"
	adminKey = "pluginAdminSecretKey000000000000"
)

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

// kmsdProc is one running kmsd process.
type kmsdProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	addr   string // host:port it listens on
	stderr *syncBuffer
	done   chan error
}

// testKMSD is a kmsd instance (token, data directory) that can be stopped
// and started again on the same address.
type testKMSD struct {
	t     *testing.T
	env   []string
	proc  *kmsdProc
	admin *kmsclient.Client
	logs  []*syncBuffer // every process's stderr, for the leak check
}

// newKMSD makes a token and a data directory, imports the administrator
// credential and starts kmsd on a free loopback port.
func newKMSD(t *testing.T) *testKMSD {
	t.Helper()
	return newKMSDWith(t, nil)
}

// newKMSDWith is newKMSD with extra environment for kmsd (e.g. TLS); the
// administrator's client uses adminTLS (https) if it is not nil.
func newKMSDWith(t *testing.T, adminTLS *tls.Config, extraEnv ...string) *testKMSD {
	t.Helper()
	tok := softhsm.NewTokenNoEnv(t)
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TENCENTCLOUD_") && !strings.HasPrefix(kv, "KMSD_") {
			env = append(env, kv)
		}
	}
	env = append(env, append(tok.Env(),
		"KMSD_PKCS11_MODULE="+tok.Module, "KMSD_TOKEN_LABEL="+tok.Label, "KMSD_PIN="+tok.PIN,
		"KMSD_DATA_DIR="+t.TempDir())...)
	env = append(env, extraEnv...)
	cmd := exec.Command(filepath.Join(binDir, "kmsd"), "credentials", "import", "-admin", "-name", "plugin-admin", "-if-none")
	cmd.Env = append(env, "TENCENTCLOUD_SECRET_ID="+adminID, "TENCENTCLOUD_SECRET_KEY="+adminKey)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("kmsd credentials import: %v\n%s", err, out)
	}
	k := &testKMSD{t: t, env: env}
	k.start("127.0.0.1:0")
	cfg := kmsclient.Config{Endpoint: "http://" + k.proc.addr, SecretID: adminID, SecretKey: adminKey, Timeout: 30 * time.Second}
	if adminTLS != nil {
		cfg.Endpoint = "https://" + k.proc.addr
		cfg.TLS = adminTLS
	}
	admin, err := kmsclient.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	k.admin = admin
	t.Cleanup(func() { k.stop() })
	return k
}

// start runs kmsd on addr and waits until it listens.
func (k *testKMSD) start(addr string) {
	t := k.t
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "kmsd"))
	cmd.Env = append(k.env, "KMSD_ADDR="+addr)
	pr, pw := io.Pipe()
	buf := &syncBuffer{}
	k.logs = append(k.logs, buf)
	cmd.Stderr = io.MultiWriter(buf, pw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &kmsdProc{t: t, cmd: cmd, stderr: buf, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		p.done <- err
		pw.Close()
	}()
	listening := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "listening" {
				listening <- line.Addr
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case p.addr = <-listening:
	case err := <-p.done:
		t.Fatalf("kmsd exited before listening: %v\n%s", err, buf.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("kmsd did not listen within 30s\n%s", buf.String())
	}
	k.proc = p
}

// stop sends SIGTERM to kmsd and waits for it to exit.
func (k *testKMSD) stop() {
	p := k.proc
	if p == nil || p.cmd.ProcessState != nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		if err != nil {
			k.t.Errorf("kmsd exited with %v after SIGTERM\n%s", err, p.stderr.String())
		}
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		k.t.Errorf("kmsd did not stop within 30s after SIGTERM")
	}
}

// restart stops kmsd and starts it again on the same address.
func (k *testKMSD) restart() {
	k.stop()
	k.start(k.proc.addr)
}

func (k *testKMSD) url() string { return "http://" + k.proc.addr }

// call is an administrator's call that must succeed.
func (k *testKMSD) call(action string, params map[string]any, out any) {
	k.t.Helper()
	if out == nil {
		out = &struct{}{}
	}
	if err := k.admin.Call(context.Background(), action, params, out); err != nil {
		k.t.Fatalf("%s: %v", action, err)
	}
}

func (k *testKMSD) createKey(alias string) string {
	k.t.Helper()
	var out struct{ KeyId string }
	k.call("CreateKey", map[string]any{"Alias": alias}, &out)
	return out.KeyId
}

// credential creates a credential allowing actions on keyID and writes it
// to a credential file as kmsctl credentials create prints it.
func (k *testKMSD) credential(name, keyID string, actions ...string) string {
	k.t.Helper()
	doc, _ := json.Marshal(map[string]any{"version": "2.0", "statement": []any{
		map[string]any{"effect": "allow", "action": actions, "resource": []string{keyID}}}})
	var out struct{ SecretId, SecretKey string }
	k.call("CreateCredential", map[string]any{"Name": name, "Policy": string(doc)}, &out)
	f := filepath.Join(k.t.TempDir(), name+".env")
	body := fmt.Sprintf("# kmsctl credentials create -name %s\nTENCENTCLOUD_SECRET_ID=%s\nTENCENTCLOUD_SECRET_KEY=%s\n", name, out.SecretId, out.SecretKey)
	if err := os.WriteFile(f, []byte(body), 0o600); err != nil {
		k.t.Fatal(err)
	}
	return f
}

// pluginCredential is the policy the README recommends.
var pluginActions = []string{"kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"}

// testPlugin is a plugin served in-process on a unix socket.
type testPlugin struct {
	socket string
	client kmsapi.KeyManagementServiceClient
	log    *syncBuffer
	stop   func() error // cancels run's context and returns run's error
}

// startPlugin runs the plugin with args (plus -socket, unless given) and
// connects a gRPC client to its socket.
func startPlugin(t *testing.T, args ...string) *testPlugin {
	t.Helper()
	sock := filepath.Join(shortTempDir(t), "kms.sock")
	hasSocket := false
	for _, a := range args {
		hasSocket = hasSocket || strings.HasPrefix(a, "-socket")
	}
	if !hasSocket {
		args = append([]string{"-socket", sock}, args...)
	}
	ctx, cancel := context.WithCancel(context.Background())
	log := &syncBuffer{}
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, log, ready) }()
	select {
	case sock = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("plugin exited: %v\n%s", err, log.String())
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatalf("plugin did not listen within 10s\n%s", log.String())
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	var runErr error
	p := &testPlugin{socket: sock, client: kmsapi.NewKeyManagementServiceClient(conn), log: log}
	p.stop = func() error {
		once.Do(func() {
			conn.Close()
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("plugin did not stop within 30s")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("plugin: %v", err)
		}
	})
	return p
}

// shortTempDir is a temporary directory with a short path: a unix socket
// path is limited to 108 bytes, which t.TempDir's can exceed.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "kp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// within returns a context with a deadline d from now.
func within(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
