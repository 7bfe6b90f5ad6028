package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"
)

// The software-mock cell: the same closed-loop Encrypt load against
// local-kms (github.com/nsmithuk/local-kms, an AWS KMS mock that keeps its
// keys in memory and a LevelDB file and encrypts with Go's crypto), run in
// the same rounds as kmsd's cells, so that kmsd's HSM-backed, signed API 3.0
// Encrypt can be set beside a software-only KMS on the same machine. The
// mock verifies no signature and authorises nothing; its requests carry a
// fixed Authorization header of an AWS request's size, so the client's cost
// per request is the same as for a pre-signed kmsd request.

// mockKMS is a running local-kms process.
type mockKMS struct {
	cmd  *exec.Cmd
	addr string
	done chan error
}

// startMock starts the local-kms binary bin on a free loopback port with
// its data in dir, and waits until it answers.
func startMock(bin, dir string) (*mockKMS, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT="+strconv.Itoa(port), "KMS_DATA_PATH="+dir, "KMS_REGION=eu-west-2", "KMS_ACCOUNT_ID=111122223333")
	logf, err := os.Create(filepath.Join(dir, "local-kms.log"))
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("local-kms: %w", err)
	}
	m := &mockKMS{cmd: cmd, addr: "127.0.0.1:" + strconv.Itoa(port), done: make(chan error, 1)}
	go func() { m.done <- cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := m.call("ListKeys", map[string]any{}); err == nil {
			return m, nil
		} else if time.Now().After(deadline) {
			m.stop()
			return nil, fmt.Errorf("local-kms did not answer within 30s: %v", err)
		}
		select {
		case err := <-m.done:
			return nil, fmt.Errorf("local-kms exited: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *mockKMS) address() string { return m.addr }

func (m *mockKMS) snap() snapshot {
	var s snapshot
	s.ticks, _ = cpuTicks(m.cmd.Process.Pid)
	s.selfCPU = selfCPU()
	return s
}

func (m *mockKMS) stop() {
	_ = m.cmd.Process.Kill()
	<-m.done
}

// call sends one AWS JSON 1.1 request and decodes a 200 reply into a map.
func (m *mockKMS) call(action string, params any) (map[string]any, error) {
	body, _ := json.Marshal(params)
	req, _ := http.NewRequest(http.MethodPost, "http://"+m.addr+"/", bytes.NewReader(body))
	req.Header.Set("X-Amz-Target", "TrentService."+action)
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %d: %.300s", action, resp.StatusCode, b)
	}
	var out map[string]any
	return out, json.Unmarshal(b, &out)
}

// mockEncryptOp creates a key in the mock and returns the op that drives
// its Encrypt with size-byte plaintexts and the benchmark's context.
func mockEncryptOp(m *mockKMS, size int) (opSpec, error) {
	r, err := m.call("CreateKey", map[string]any{"Description": "bench"})
	if err != nil {
		return opSpec{}, err
	}
	md, _ := r["KeyMetadata"].(map[string]any)
	keyID, _ := md["KeyId"].(string)
	if keyID == "" {
		return opSpec{}, fmt.Errorf("local-kms CreateKey: no KeyId in %v", r)
	}
	var benchCtx map[string]string
	if err := json.Unmarshal([]byte(benchContext), &benchCtx); err != nil {
		return opSpec{}, err
	}
	// An AWS SigV4 Authorization header's shape and size; the mock does not
	// check it.
	auth := "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261206/eu-west-2/kms/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=" + string(bytes.Repeat([]byte("0"), 64))
	var reqs [][]byte
	for range 64 {
		pt := make([]byte, size)
		for i := range pt {
			pt[i] = byte(i*7 + len(reqs))
		}
		body, _ := json.Marshal(map[string]any{"KeyId": keyID, "Plaintext": base64.StdEncoding.EncodeToString(pt), "EncryptionContext": benchCtx})
		if _, err := m.call("Encrypt", json.RawMessage(body)); err != nil {
			return opSpec{}, fmt.Errorf("local-kms Encrypt (set-up): %w", err)
		}
		reqs = append(reqs, []byte(fmt.Sprintf("POST / HTTP/1.1\r\nHost: %s\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: TrentService.Encrypt\r\nX-Amz-Date: 20261206T120000Z\r\nAuthorization: %s\r\nContent-Length: %d\r\n\r\n%s",
			m.addr, auth, len(body), body)))
	}
	return opSpec{name: "mock-encrypt", src: func(w int) source { return &fixedSource{reqs: reqs} }}, nil
}

// fixedSource sends pre-built requests round robin; a reply is good when
// it carries a CiphertextBlob.
type fixedSource struct{ reqs [][]byte }

func (s *fixedSource) next(w int, i uint64) []byte {
	return s.reqs[(uint64(w)*7919+i)%uint64(len(s.reqs))]
}

func (s *fixedSource) ok(body []byte) bool { return bytes.Contains(body, []byte(`"CiphertextBlob"`)) }
