package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// manyKeys creates o.manyKeys CMKs, restarts kmsd to time its start-up, and
// compares Encrypt across random keys with the one-key figure, interleaved.
// It returns the running kmsd (a new process).
func manyKeys(ctx context.Context, o options, k *kmsd, bin string, env []string, logPath, oneKey string, out io.Writer) (*kmsd, error) {
	host := k.addr
	ids := make([]string, o.manyKeys)
	var next atomic.Int64
	var firstErr error
	var errMu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	var done atomic.Int64
	for w := 0; w < o.manyConc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= o.manyKeys || ctx.Err() != nil {
					return
				}
				id, err := createKey(host, fmt.Sprintf("many-%06d", i))
				if err != nil {
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					return
				}
				ids[i] = id
				if n := done.Add(1); n%int64(max(o.manyKeys/10, 1)) == 0 {
					errMu.Lock() // out is not safe for concurrent use
					fmt.Fprintf(out, "  created %d keys, %.0f keys/s so far\n", n, float64(n)/time.Since(t0).Seconds())
					errMu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return k, fmt.Errorf("creating keys: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return k, err
	}
	el := time.Since(t0)
	fmt.Fprintf(out, "created %d CMKs with %d clients in %.1f s: %.0f keys/s\n", o.manyKeys, o.manyConc, el.Seconds(), float64(o.manyKeys)/el.Seconds())

	if err := k.stop(); err != nil {
		return nil, fmt.Errorf("stopping kmsd: %w", err)
	}
	time.Sleep(100 * time.Millisecond)
	nk, err := startKMSD(bin, env, logPath)
	if err != nil {
		return nil, err
	}
	rss, _ := rssBytes(nk.cmd.Process.Pid)
	fmt.Fprintf(out, "kmsd start-up with %d keys: %s ms (RSS %.1f MiB)\n", o.manyKeys+1, ms(nk.startup), float64(rss)/(1<<20))
	host = nk.addr

	pt := randomB64(o.size)
	var manyBodies [][]byte
	for _, id := range ids {
		b, _ := json.Marshal(map[string]string{"KeyId": id, "Plaintext": pt, "EncryptionContext": benchContext})
		manyBodies = append(manyBodies, b)
	}
	oneBody, _ := json.Marshal(map[string]string{"KeyId": oneKey, "Plaintext": pt, "EncryptionContext": benchContext})
	manyPool := newTC3Pool(host, "Encrypt", manyBodies)
	defer manyPool.close()
	onePool := newTC3Pool(host, "Encrypt", [][]byte{oneBody})
	defer onePool.close()
	c := slices.Max(o.conc)
	randomKeys := func(round int) func(w int) source {
		return func(w int) source {
			return &poolSource{p: manyPool, random: true, seed: uint64(round*1000+w)*0x9E3779B97F4A7C15 + 1}
		}
	}
	// First touch: every session makes a working copy of every key on its
	// first use of it (C_CopyObject of a token object), and the usage
	// accounting reserves a block per key version. Reported on its own,
	// not in the ratio, which compares steady states.
	var cold cellStats
	cr := measure(nk, c, randomKeys(-1), 0, 3*o.dur, &cold)
	fmt.Fprintf(out, "first touch: encrypt@%d random of %d keys, %s from start-up: %.0f req/s (p99 %s ms), %d requests, errors %d\n",
		c, o.manyKeys, 3*o.dur, cr, ms(cold.hist.quantile(0.99)), cold.reqs, cold.errs)
	var one, many cellStats
	var ratios []float64
	for r := 0; r < o.rounds; r++ {
		m := measure(nk, c, randomKeys(r), o.warm, o.dur, &many)
		s := measure(nk, c, func(w int) source { return &poolSource{p: onePool} }, o.warm, o.dur, &one)
		ratios = append(ratios, m/s)
		fmt.Fprintf(out, "round %d: encrypt@%d random of %d keys %.0f req/s, one key %.0f req/s, ratio %.2f\n",
			r+1, c, o.manyKeys, m, s, m/s)
	}
	fmt.Fprintf(out, "many-keys encrypt@%d: %.0f req/s (p99 %s ms) vs one key %.0f req/s (p99 %s ms): ratio %.2f (per-round %s), errors %d/%d\n",
		c, median(many.rps), ms(many.hist.quantile(0.99)), median(one.rps), ms(one.hist.quantile(0.99)), median(ratios), fmtList(ratios), many.errs, one.errs)
	for _, cs := range []*cellStats{&cold, &many, &one} {
		if cs.errs > 0 {
			fmt.Fprintf(out, "  first error: %s\n", cs.firstErr)
			break
		}
	}
	return nk, nil
}

// soak drives a mix of every available operation for o.soak and reports
// kmsd's RSS over time.
func soak(ctx context.Context, o options, k *kmsd, ops []opSpec, out io.Writer) error {
	var names []string
	var srcs []func(w int) source
	for _, op := range ops {
		if op.avail == "" {
			names = append(names, op.name)
			srcs = append(srcs, op.src)
		}
	}
	pid := k.cmd.Process.Pid
	rss0, _ := rssBytes(pid)
	warm := max(o.soak/10, 200*time.Millisecond)
	d := o.soak - warm
	if o.soakWarm > 0 {
		warm, d = o.soakWarm, o.soak
	}
	fmt.Fprintf(out, "mix %s, round robin, %d clients, %v measured after a %v warm-up (RSS growth counts from its end); RSS before load %.1f MiB\n",
		strings.Join(names, "+"), o.soakConc, d, warm, float64(rss0)/(1<<20))
	var rssStart uint64
	stopSampler := make(chan struct{})
	var samplerDone sync.WaitGroup
	var samples []string
	var cs cellStats
	r := drive(k.addr, o.soakConc, func(w int) source {
		l := &lastSource{}
		for _, s := range srcs {
			l.srcs = append(l.srcs, s(w))
		}
		return l
	}, warm, d, func(start bool) {
		if start {
			rssStart, _ = rssBytes(pid)
			samplerDone.Add(1)
			go func() {
				defer samplerDone.Done()
				t := time.NewTicker(max(d/10, 100*time.Millisecond))
				defer t.Stop()
				for {
					select {
					case <-t.C:
						v, _ := rssBytes(pid)
						samples = append(samples, fmt.Sprintf("%.0f", float64(v)/(1<<20)))
					case <-stopSampler:
						return
					}
				}
			}()
		} else {
			close(stopSampler)
			samplerDone.Wait()
		}
	})
	rssEnd, _ := rssBytes(pid)
	cs.hist = r.hist
	growth := (float64(rssEnd)/float64(rssStart) - 1) * 100
	fmt.Fprintf(out, "soak: %d requests, %.0f req/s, p50 %s ms, p99 %s ms, p99.9 %s ms, errors %d\n",
		r.reqs, float64(r.reqs-r.errs)/r.elapsed.Seconds(), ms(cs.hist.quantile(0.5)), ms(cs.hist.quantile(0.99)), ms(cs.hist.quantile(0.999)), r.errs)
	if r.errs > 0 {
		fmt.Fprintf(out, "  first error: %s\n", r.firstErr)
	}
	fmt.Fprintf(out, "soak RSS: before load %.1f MiB, start %.1f MiB, end %.1f MiB, growth %+.1f%% (samples MiB: %s)\n",
		float64(rss0)/(1<<20), float64(rssStart)/(1<<20), float64(rssEnd)/(1<<20), growth, strings.Join(samples, " "))
	if r.reqs == 0 {
		return errors.New("soak: no requests completed")
	}
	return ctx.Err()
}
