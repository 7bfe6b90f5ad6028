package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// The optional local-kms comparison (-local-kms): the aws-encrypt cell,
// byte for byte the same requests, against github.com/nsmithuk/local-kms,
// a software-only AWS KMS mock (keys in memory, no authorisation, no
// audit), on the same machine, so that kmsd's Encrypt (HSM, policies,
// audit trail, usage accounting) can be set beside a mock's.

// localKMSModule is the pinned local-kms, built into the directory of the
// kmsd binary with go install.
const localKMSModule = "github.com/nsmithuk/local-kms@v0.0.0-20260228092603-2a5e92d09ab6"

// buildLocalKMS builds local-kms into dir and returns its path.
func buildLocalKMS(dir string) (string, error) {
	cmd := exec.Command("go", "install", localKMSModule)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %v\n%s", localKMSModule, err, out)
	}
	return filepath.Join(dir, "local-kms"), nil
}

var localKMSListening = regexp.MustCompile(`Local KMS started on [0-9.]+:([0-9]+)`)

// startLocalKMS starts local-kms on a free port (it listens on every
// interface: it has no option for one) with its database in dir.
func startLocalKMS(bin, dir string) (*kmsd, error) {
	cmd := exec.Command(bin)
	cmd.Env = append(os.Environ(), "PORT=0", "KMS_REGION="+awsBenchRegion, "KMS_ACCOUNT_ID=111122223333",
		"KMS_DATA_PATH="+filepath.Join(dir, "data"), "KMS_SEED_PATH="+filepath.Join(dir, "no-seed.yaml"))
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	k := &kmsd{cmd: cmd, done: make(chan error, 1)}
	go func() { k.done <- cmd.Wait(); pw.Close() }()
	port := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if m := localKMSListening.FindStringSubmatch(sc.Text()); m != nil {
				port <- m[1]
			}
		}
		io.Copy(io.Discard, pr)
	}()
	select {
	case p := <-port:
		k.addr = "127.0.0.1:" + p
		return k, nil
	case err := <-k.done:
		return nil, fmt.Errorf("local-kms exited: %v", err)
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		return nil, fmt.Errorf("local-kms did not start within 30 s")
	}
}

// localKMSRun measures the aws-encrypt cell against local-kms, o.rounds
// times at each concurrency, and prints it beside kmsd's (kmsdCPU: kmsd's
// aws-encrypt server CPU per request, by concurrency).
func localKMSRun(ctx context.Context, o options, out io.Writer, kmsdCPU map[int]float64) error {
	binDir, err := filepath.Abs(filepath.Dir(o.kmsdBin))
	if err != nil {
		return err
	}
	bin, err := buildLocalKMS(binDir)
	if err != nil {
		return err
	}
	dir := filepath.Join(o.workDir, "local-kms")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	lk, err := startLocalKMS(bin, dir)
	if err != nil {
		return err
	}
	defer func() {
		lk.cmd.Process.Kill()
		<-lk.done
	}()
	ck, err := awsCall(lk.addr, "CreateKey", map[string]any{})
	if err != nil {
		return err
	}
	md, _ := ck["KeyMetadata"].(map[string]any)
	keyID, _ := md["KeyId"].(string)
	op, pool := awsEncryptOp(lk.addr, keyID, o.size)
	if op.avail != "" {
		return fmt.Errorf("local-kms Encrypt: %s", op.avail)
	}
	defer pool.close()
	fmt.Fprintf(out, "local-kms %s: aws-encrypt, %d rounds\n", localKMSModule, o.rounds)
	for _, c := range o.conc {
		cs := &cellStats{}
		for r := 0; r < o.rounds; r++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			measure(lk, c, op.src, o.warm, o.dur, cs)
		}
		fmt.Fprintf(out, "%-16s %5d %9.0f req/s %8s p50 ms %8s p99 ms %9.1f srv µs/r %7d errors\n",
			"local-kms", c, median(cs.rps), ms(cs.hist.quantile(0.50)), ms(cs.hist.quantile(0.99)), median(cs.srvCPU), cs.errs)
		if cs.errs > 0 {
			fmt.Fprintf(out, "  first error: %s\n", cs.firstErr)
		}
		if v, ok := kmsdCPU[c]; ok && median(cs.srvCPU) > 0 {
			fmt.Fprintf(out, "aws_encrypt_cpu_ratio_kmsd_to_local_kms@%s: %.2f\n", strconv.Itoa(c), v/median(cs.srvCPU))
		}
	}
	return nil
}
