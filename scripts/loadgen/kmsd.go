package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hsmkms/softhsm"
)

// kmsd is a running kmsd process.
type kmsd struct {
	cmd       *exec.Cmd
	addr      string // API, host:port
	debugAddr string
	startup   time.Duration // exec to "listening"
	logFile   *os.File
	done      chan error
}

// kmsdEnv is the environment of kmsd on tok with its store in dataDir.
func kmsdEnv(tok softhsm.Token, dataDir string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TENCENTCLOUD_") && !strings.HasPrefix(kv, "KMSD_") && !strings.HasPrefix(kv, "SOFTHSM2_CONF=") {
			env = append(env, kv)
		}
	}
	env = append(env, tok.Env()...)
	env = append(env,
		"KMSD_PKCS11_MODULE="+tok.Module,
		"KMSD_TOKEN_LABEL="+tok.Label,
		"KMSD_PIN="+tok.PIN,
		"KMSD_DATA_DIR="+dataDir,
		"KMSD_ADDR=127.0.0.1:0",
		"KMSD_DEBUG_ADDR=127.0.0.1:0",
		"KMSD_LOG_LEVEL=info",
		"KMSD_AWS_REGIONS="+awsBenchRegion, // the aws-encrypt cell (aws.go)
	)
	return append(env, extra...)
}

// bootstrapAdmin imports the bench's administrator credential.
func bootstrapAdmin(bin string, env []string) error {
	cmd := exec.Command(bin, "credentials", "import", "-admin", "-name", "bench", "-if-none")
	cmd.Env = append(env, "TENCENTCLOUD_SECRET_ID="+secretID, "TENCENTCLOUD_SECRET_KEY="+secretKey)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("kmsd credentials import: %v\n%s", err, out)
	}
	time.Sleep(100 * time.Millisecond) // SoftHSM2: simultaneous opens of one token directory can fail
	return nil
}

// startKMSD starts kmsd and waits until both its listeners are up. Its log
// goes to logPath.
func startKMSD(bin string, env []string, logPath string) (*kmsd, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin)
	cmd.Env = env
	pr, pw := io.Pipe()
	cmd.Stderr = io.MultiWriter(pw, lf)
	k := &kmsd{cmd: cmd, logFile: lf, done: make(chan error, 1)}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	go func() { k.done <- cmd.Wait(); pw.Close() }()
	type ev struct {
		msg, addr string
		at        time.Time
	}
	evs := make(chan ev, 4)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && (line.Msg == "listening" || line.Msg == "debug listening") {
				evs <- ev{line.Msg, line.Addr, time.Now()}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	timeout := time.After(120 * time.Second)
	for k.addr == "" || k.debugAddr == "" {
		select {
		case e := <-evs:
			if e.msg == "listening" {
				k.addr = e.addr
				k.startup = e.at.Sub(t0)
			} else {
				k.debugAddr = e.addr
			}
		case err := <-k.done:
			lf.Close()
			return nil, fmt.Errorf("kmsd exited before listening: %v (log: %s)", err, logPath)
		case <-timeout:
			cmd.Process.Kill()
			lf.Close()
			return nil, fmt.Errorf("kmsd did not listen within 120s (log: %s)", logPath)
		}
	}
	return k, nil
}

// stop sends SIGTERM and waits.
func (k *kmsd) stop() error {
	defer k.logFile.Close()
	_ = k.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-k.done:
		return err
	case <-time.After(30 * time.Second):
		_ = k.cmd.Process.Kill()
		return fmt.Errorf("kmsd did not stop within 30s of SIGTERM")
	}
}

// cpuTicks returns utime+stime of pid in clock ticks (USER_HZ = 100 on Linux).
func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised comm; utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+2:]))
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return u + s, nil
}

const tickDuration = 10 * time.Millisecond // USER_HZ 100

// rssBytes returns VmRSS of pid.
func rssBytes(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			f := strings.Fields(v)
			n, err := strconv.ParseUint(f[0], 10, 64)
			return n << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for %d", pid)
}

// selfCPU returns the load generator's own user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// debugMetrics reads kmsd's /debug/metrics.
func (k *kmsd) metrics() (map[string]uint64, error) {
	resp, err := http.Get("http://" + k.debugAddr + "/debug/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var m map[string]uint64
	return m, json.NewDecoder(resp.Body).Decode(&m)
}

// snapshot is the server and client counters at one instant.
type snapshot struct {
	ticks   uint64
	allocs  uint64
	selfCPU time.Duration
}

func (k *kmsd) address() string { return k.addr }

func (k *kmsd) snap() snapshot {
	var s snapshot
	s.ticks, _ = cpuTicks(k.cmd.Process.Pid)
	if m, err := k.metrics(); err == nil {
		s.allocs = m["allocs_objects"]
	}
	s.selfCPU = selfCPU()
	return s
}
