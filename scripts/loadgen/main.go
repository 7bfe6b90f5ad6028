// Command loadgen is hsmkms's benchmark harness (make bench, make soak).
//
// In one run on one machine it makes a fresh SoftHSM2 token, measures the
// raw PKCS#11 ceiling on it (1 KiB CKM_AES_GCM encrypts, one session, one
// goroutine, through hsm/p11), starts kmsd on the same token and drives it
// over loopback with keep-alive connections: API 3.0 Encrypt, Decrypt and
// GenerateDataKey (TC3-signed, from pre-signed pools) and legacy Encrypt
// (HmacSHA256, signed per request), and the AWS KMS API's Encrypt (SigV4,
// signed by the AWS SDK's signer, from a pre-signed pool). Raw and HTTP cells are interleaved in
// rounds, and every ratio is the median of per-round ratios. It then runs
// the many-keys check and a mixed soak. See BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"hsmkms/hsm/p11"
	"hsmkms/softhsm"
)

type options struct {
	kmsdBin  string
	workDir  string // "" -> a temporary directory, removed at the end
	rounds   int
	dur      time.Duration // counted window of one HTTP cell
	warm     time.Duration // uncounted lead-in of one HTTP cell
	rawDur   time.Duration
	conc     []int
	size     int
	sessions string // KMSD_SESSIONS; "" -> kmsd's default
	manyKeys int    // 0: skip
	manyConc int
	soak     time.Duration // 0: skip
	soakConc int
	soakWarm time.Duration // 0: 10 % of soak, inside it
	parts    map[string]bool
	ops      map[string]bool // main run: operations to drive (nil: all)
	// clientProcs is the load generator's GOMAXPROCS while it drives kmsd
	// (0: Go's default). Raw cells always run at Go's default.
	clientProcs int
	// mockBin is a local-kms binary (mock.go); "" leaves out the
	// software-mock cell.
	mockBin string
}

func main() {
	var o options
	var conc, parts, opsFlag string
	flag.StringVar(&o.kmsdBin, "kmsd", "bin/kmsd", "kmsd binary")
	flag.StringVar(&o.workDir, "work", "", "work directory (default: a temporary one, removed afterwards)")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds")
	flag.DurationVar(&o.dur, "duration", 4*time.Second, "counted time of one HTTP cell")
	flag.DurationVar(&o.warm, "warm", 500*time.Millisecond, "uncounted warm-up of one HTTP cell")
	flag.DurationVar(&o.rawDur, "raw-duration", 3*time.Second, "time of one raw PKCS#11 cell")
	flag.StringVar(&conc, "conc", "16,64", "concurrent clients (keep-alive connections)")
	flag.IntVar(&o.size, "size", 1024, "plaintext bytes")
	flag.StringVar(&o.sessions, "sessions", os.Getenv("KMSD_SESSIONS"), "kmsd -sessions (default: kmsd's)")
	flag.IntVar(&o.manyKeys, "many-keys", 10000, "CMKs of the many-keys run (0: skip)")
	flag.IntVar(&o.manyConc, "many-create-conc", 4, "concurrent CreateKey clients")
	flag.DurationVar(&o.soak, "soak", time.Minute, "mixed-load soak duration (0: skip)")
	flag.IntVar(&o.soakConc, "soak-conc", 16, "soak clients")
	flag.DurationVar(&o.soakWarm, "soak-warm", 0, "uncounted load before the soak's start RSS, in addition to -soak (0: the first 10% of -soak); e.g. 400s lets the legacy replay cache (300 s window, kept by the minute) fill first")
	flag.StringVar(&parts, "parts", "main,manykeys,network,twonode,soak", "parts to run")
	flag.StringVar(&opsFlag, "ops", "", "main run: comma-separated operations to drive (encrypt, decrypt, generatedatakey, legacy-encrypt, aws-encrypt; default all)")
	flag.IntVar(&o.clientProcs, "client-procs", 1, "GOMAXPROCS of the load generator while it drives kmsd (0: Go's default); the raw cells run at Go's default")
	flag.StringVar(&o.mockBin, "mock", "", "local-kms binary: adds a mock-encrypt cell (a software-only AWS KMS mock, same load) beside kmsd's Encrypt")
	cpuProfile := flag.String("cpuprofile", "", "write the load generator's own CPU profile to this file")
	flag.Parse()
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "loadgen: -cpuprofile:", err)
			os.Exit(2)
		}
		defer pprof.StopCPUProfile()
	}
	for _, c := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(c))
		if err != nil || n < 1 {
			fmt.Fprintln(os.Stderr, "loadgen: bad -conc")
			os.Exit(2)
		}
		o.conc = append(o.conc, n)
	}
	o.parts = map[string]bool{}
	for _, p := range strings.Split(parts, ",") {
		o.parts[strings.TrimSpace(p)] = true
	}
	if opsFlag != "" {
		o.ops = map[string]bool{}
		for _, op := range strings.Split(opsFlag, ",") {
			o.ops[strings.TrimSpace(op)] = true
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runBench(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func runBench(ctx context.Context, o options, out io.Writer) (err error) {
	if o.workDir == "" {
		d, err := os.MkdirTemp("", "hsmkms-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		o.workDir = d
	}
	bin, err := filepath.Abs(o.kmsdBin)
	if err != nil {
		return err
	}
	machineInfo(out)
	fmt.Fprintf(out, "method: %d interleaved rounds; HTTP cells %v counted after %v warm-up; raw cells %v; plaintext %d B; encryption context %s; kmsd sessions %s\n",
		o.rounds, o.dur, o.warm, o.rawDur, o.size, benchContext, orDefault(o.sessions, "default"))
	// The load generator shares the machine's CPUs with kmsd. Its clients
	// spend their time in write(2), read(2) and the netpoller, which one P
	// serves; more Ps only add runnable threads that preempt kmsd's. The
	// raw cell, a single goroutine making cgo calls, is measured at Go's
	// default, where it is fastest (≈1.08× its rate at one P), so that the
	// ceiling is not lowered by this choice.
	defaultProcs := runtime.GOMAXPROCS(0)
	if o.clientProcs > 0 {
		runtime.GOMAXPROCS(o.clientProcs)
		defer runtime.GOMAXPROCS(defaultProcs)
	}
	fmt.Fprintf(out, "load generator: GOMAXPROCS %d while driving kmsd, %d for the raw cells\n", runtime.GOMAXPROCS(0), defaultProcs)

	// A fresh token; the raw ceiling runs in this process on its own key.
	tok, err := softhsm.Create(filepath.Join(o.workDir, "softhsm"), "bench", "1234", "5678")
	if err != nil {
		return err
	}
	oldConf, hadConf := os.LookupEnv("SOFTHSM2_CONF")
	os.Setenv("SOFTHSM2_CONF", tok.Conf)
	defer func() {
		if hadConf {
			os.Setenv("SOFTHSM2_CONF", oldConf)
		} else {
			os.Unsetenv("SOFTHSM2_CONF")
		}
	}()
	raw, err := p11.OpenToken(ctx, p11.Config{ModulePath: tok.Module, TokenLabel: tok.Label, PIN: tok.PIN, Sessions: 1, LabelPrefix: "hsmkms-bench:"})
	if err != nil {
		return fmt.Errorf("raw token: %w", err)
	}
	defer raw.Close()
	rawID := []byte("bench-raw-ceiling")
	if err := raw.GenerateKey(ctx, rawID, "raw"); err != nil {
		return err
	}
	// AAD as long as the service's: 21-byte header + canonical context.
	rawAAD := make([]byte, 21+4+4+3+4+5+4+6+4+2)
	rawAAD[0] = 1

	// kmsd on the same token.
	extra := []string{"KMSD_KEY_LIMIT=" + strconv.Itoa(o.manyKeys+100)}
	if o.sessions != "" {
		extra = append(extra, "KMSD_SESSIONS="+o.sessions)
	}
	env := kmsdEnv(tok, filepath.Join(o.workDir, "data"), extra...)
	if err := bootstrapAdmin(bin, env); err != nil {
		return err
	}
	logPath := filepath.Join(o.workDir, "kmsd.log")
	k, err := startKMSD(bin, env, logPath)
	if err != nil {
		return err
	}
	defer func() {
		if k != nil {
			if serr := k.stop(); serr != nil && err == nil {
				err = fmt.Errorf("kmsd: %v", serr)
			}
		}
	}()
	fmt.Fprintf(out, "kmsd start-up (1 credential, 0 keys): %s ms\n", ms(k.startup))
	host := k.addr

	keyID, err := createKey(host, "bench")
	if err != nil {
		return err
	}
	ops, closePools, err := buildOps(host, keyID, o.size)
	if err != nil {
		return err
	}
	defer closePools()
	if o.mockBin != "" && o.parts["main"] {
		m, err := startMock(o.mockBin, filepath.Join(o.workDir, "local-kms"))
		if err != nil {
			return err
		}
		defer m.stop()
		op, err := mockEncryptOp(m, o.size)
		if err != nil {
			return err
		}
		op.tgt = m
		ops = append(ops, op)
	}

	var rawRates []float64
	encRatio := map[int][]float64{}
	// Per round: kmsd's Encrypt rate over the software mock's (mock.go).
	mockRatio := map[int][]float64{}
	stats := map[string]*cellStats{}
	key := func(op string, c int) string { return op + "@" + strconv.Itoa(c) }

	if o.parts["main"] {
		fmt.Fprintln(out, "\n== main run ==")
		for r := 0; r < o.rounds; r++ {
			if err := ctx.Err(); err != nil {
				return err
			}
			procs := runtime.GOMAXPROCS(defaultProcs)
			res, err := raw.BenchRawSeal(ctx, rawID, o.size, rawAAD, o.rawDur)
			runtime.GOMAXPROCS(procs)
			if err != nil {
				return fmt.Errorf("raw ceiling: %w", err)
			}
			rawRate := res.OpsPerSec()
			rawRates = append(rawRates, rawRate)
			type cell struct {
				op opSpec
				c  int
			}
			var cells []cell
			for _, op := range ops {
				if op.avail != "" || (o.ops != nil && !o.ops[op.name]) {
					continue
				}
				for _, c := range o.conc {
					cells = append(cells, cell{op, c})
				}
			}
			rand.Shuffle(len(cells), func(i, j int) { cells[i], cells[j] = cells[j], cells[i] })
			line := fmt.Sprintf("round %d: raw %.0f ops/s", r+1, rawRate)
			for _, c := range cells {
				cs := stats[key(c.op.name, c.c)]
				if cs == nil {
					cs = &cellStats{}
					stats[key(c.op.name, c.c)] = cs
				}
				var tgt target = k
				if c.op.tgt != nil {
					tgt = c.op.tgt
				}
				rps := measure(tgt, c.c, c.op.src, o.warm, o.dur, cs)
				if c.op.name == "encrypt" {
					encRatio[c.c] = append(encRatio[c.c], rps/rawRate)
				}
				line += fmt.Sprintf("; %s %.0f", key(c.op.name, c.c), rps)
			}
			fmt.Fprintln(out, line)
			if o.mockBin != "" {
				for _, c := range o.conc {
					e, m := stats[key("encrypt", c)], stats[key("mock-encrypt", c)]
					if e != nil && m != nil && len(e.rps) == r+1 && len(m.rps) == r+1 && m.rps[r] > 0 {
						mockRatio[c] = append(mockRatio[c], e.rps[r]/m.rps[r])
					}
				}
			}
		}
		lo, hi := minmax(rawRates)
		fmt.Fprintf(out, "\nraw ceiling (1 KiB CKM_AES_GCM, 1 session, 1 goroutine): %.0f ops/s (min %.0f, max %.0f)\n\n", median(rawRates), lo, hi)
		fmt.Fprintf(out, "%-16s %5s %9s %8s %8s %8s %9s %9s %9s %8s %7s\n",
			"op", "conc", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "srv µs/r", "allocs/r", "cli µs/r", "vs raw", "errors")
		for _, op := range ops {
			if op.avail != "" {
				fmt.Fprintf(out, "%-16s not available (%s)\n", op.name, op.avail)
				continue
			}
			if o.ops != nil && !o.ops[op.name] {
				continue
			}
			for _, c := range o.conc {
				cs := stats[key(op.name, c)]
				var ratios []float64
				for i, v := range cs.rps {
					ratios = append(ratios, v/rawRates[i])
				}
				fmt.Fprintf(out, "%-16s %5d %9.0f %8s %8s %8s %9.1f %9.1f %9.1f %8.2f %7d\n",
					op.name, c, median(cs.rps), ms(cs.hist.quantile(0.50)), ms(cs.hist.quantile(0.99)), ms(cs.hist.quantile(0.999)),
					median(cs.srvCPU), median(cs.allocs), median(cs.cliCPU), median(ratios), cs.errs)
				if cs.errs > 0 {
					fmt.Fprintf(out, "  first error: %s\n", cs.firstErr)
				}
			}
		}
		for _, c := range o.conc {
			fmt.Fprintf(out, "encrypt_ratio_to_raw_hsm@%d: %.2f (per-round %s)\n", c, median(encRatio[c]), fmtList(encRatio[c]))
		}
		for _, c := range o.conc {
			if len(mockRatio[c]) > 0 {
				fmt.Fprintf(out, "encrypt_ratio_to_software_mock@%d: %.2f (per-round %s; kmsd's signed API 3.0 Encrypt over local-kms's unsigned AWS Encrypt)\n", c, median(mockRatio[c]), fmtList(mockRatio[c]))
			}
		}
		for _, c := range o.conc {
			// The AWS protocol's CPU per request against API 3.0's, same
			// key, plaintext and context (issue 18's 10 % bound).
			if a, e := stats[key("aws-encrypt", c)], stats[key("encrypt", c)]; a != nil && e != nil && median(e.srvCPU) > 0 {
				fmt.Fprintf(out, "aws_encrypt_cpu_ratio_to_api3@%d: %.2f (server µs per request %.1f / %.1f)\n", c, median(a.srvCPU)/median(e.srvCPU), median(a.srvCPU), median(e.srvCPU))
			}
		}
	}

	if o.parts["manykeys"] && o.manyKeys > 0 {
		fmt.Fprintln(out, "\n== many-keys run ==")
		var nk *kmsd
		nk, err = manyKeys(ctx, o, k, bin, env, logPath, keyID, out)
		k = nk
		if err != nil {
			return err
		}
	}

	if o.parts["network"] {
		fmt.Fprintln(out, "\n== network-HSM run ==")
		if err := networkRun(ctx, o, bin, out); err != nil {
			return fmt.Errorf("network-HSM run: %w", err)
		}
	}

	if o.parts["twonode"] {
		fmt.Fprintln(out, "\n== two-node run ==")
		if err := twoNodeRun(ctx, o, bin, out); err != nil {
			return fmt.Errorf("two-node run: %w", err)
		}
	}

	if o.parts["soak"] && o.soak > 0 {
		fmt.Fprintln(out, "\n== soak ==")
		if err := soak(ctx, o, k, ops, out); err != nil {
			return err
		}
	}

	if o.parts["main"] {
		c := slices.Max(o.conc)
		fmt.Fprintf(out, "\nencrypt_ratio_to_raw_hsm: %.2f\n", median(encRatio[c]))
	}
	return nil
}
