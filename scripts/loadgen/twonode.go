package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"hsmkms/softhsm"
	"hsmkms/store/pgtest"
)

// Two-node run (issue 7): two kmsd nodes on one PostgreSQL database and one
// SoftHSM2 token directory, as behind a load balancer, against one node on
// the same database and token. Each round measures API 3.0 Encrypt with
// twoNodeConc clients on node A alone, then the same clients split evenly
// over A and B at once; the ratio is two nodes' req/s over one node's.
const twoNodeConc = 64

func twoNodeRun(ctx context.Context, o options, bin string, out io.Writer) error {
	dir := filepath.Join(o.workDir, "twonode")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	pg, err := pgtest.StartServer()
	if err != nil {
		return err
	}
	defer pg.Remove()
	dsn, err := pg.CreateDatabase(ctx, "hsmkms_bench")
	if err != nil {
		return err
	}
	dsnFile := filepath.Join(dir, "dsn")
	if err := os.WriteFile(dsnFile, []byte(dsn), 0o600); err != nil {
		return err
	}
	tok, err := softhsm.Create(filepath.Join(dir, "softhsm"), "bench-2n", "1234", "5678")
	if err != nil {
		return err
	}
	env := func(node string) []string {
		return kmsdEnv(tok, filepath.Join(dir, node), "KMSD_POSTGRES_DSN_FILE="+dsnFile)
	}
	if err := bootstrapAdmin(bin, env("a")); err != nil {
		return err
	}
	a, err := startKMSD(bin, env("a"), filepath.Join(dir, "a.log"))
	if err != nil {
		return err
	}
	defer a.stop()
	time.Sleep(300 * time.Millisecond) // SoftHSM2: two processes opening one token directory at once can fail
	b, err := startKMSD(bin, env("b"), filepath.Join(dir, "b.log"))
	if err != nil {
		return err
	}
	defer b.stop()

	keyID, err := createKey(a.addr, "two-nodes")
	if err != nil {
		return err
	}
	// TC3 signs the Host: each node gets requests signed for it.
	opsA, closeA, err := buildOps(a.addr, keyID, o.size)
	if err != nil {
		return err
	}
	defer closeA()
	opsB, closeB, err := buildOps(b.addr, keyID, o.size)
	if err != nil {
		return err
	}
	defer closeB()

	var one, two, ratios []float64
	var errs uint64
	var firstErr string
	for r := 0; r < o.rounds; r++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		var cs cellStats
		rps1 := measure(a, twoNodeConc, opsA[0].src, o.warm, o.dur, &cs)
		var csA, csB cellStats
		var rpsA, rpsB float64
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); rpsA = measure(a, twoNodeConc/2, opsA[0].src, o.warm, o.dur, &csA) }()
		go func() { defer wg.Done(); rpsB = measure(b, twoNodeConc/2, opsB[0].src, o.warm, o.dur, &csB) }()
		wg.Wait()
		one, two = append(one, rps1), append(two, rpsA+rpsB)
		ratios = append(ratios, (rpsA+rpsB)/rps1)
		for _, c := range []*cellStats{&cs, &csA, &csB} {
			errs += c.errs
			if firstErr == "" {
				firstErr = c.firstErr
			}
		}
		fmt.Fprintf(out, "round %d: one node %.0f req/s; two nodes %.0f + %.0f = %.0f req/s\n", r+1, rps1, rpsA, rpsB, rpsA+rpsB)
	}
	fmt.Fprintf(out, "two-node run (Encrypt, %d clients, PostgreSQL store, one token): one node %.0f req/s, two nodes %.0f req/s, errors %d\n",
		twoNodeConc, median(one), median(two), errs)
	if errs > 0 {
		fmt.Fprintf(out, "  first error: %s\n", firstErr)
	}
	fmt.Fprintf(out, "two_node_ratio_to_one: %.2f (per-round %s)\n", median(ratios), fmtList(ratios))
	return nil
}
