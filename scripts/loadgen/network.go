package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"hsmkms/softhsm"
	"hsmkms/softhsm/faultmod"
)

// Network-HSM run: kmsd on the fault-injection module (softhsm/faultmod),
// which adds a fixed latency to every C_Encrypt as a network HSM's round
// trip would, with a pool of networkSessions sessions. The ideal is
// networkSessions / networkDelay requests per second: every session busy
// all the time waiting for the "network".
const (
	networkSessions = 16
	networkDelay    = 2 * time.Millisecond
	networkConc     = 64
)

func networkRun(ctx context.Context, o options, bin string, out io.Writer) error {
	dir := filepath.Join(o.workDir, "network")
	if err := os.MkdirAll(filepath.Join(dir, "module"), 0o700); err != nil {
		return err
	}
	tok, err := softhsm.Create(filepath.Join(dir, "softhsm"), "bench-net", "1234", "5678")
	if err != nil {
		return err
	}
	so, _, err := faultmod.BuildIn(filepath.Join(dir, "module"))
	if err != nil {
		return err
	}
	ctl, err := faultmod.NewControllerIn(dir)
	if err != nil {
		return err
	}
	defer ctl.Close()
	env := kmsdEnv(tok, filepath.Join(dir, "data"), append(ctl.Env(),
		"KMSD_PKCS11_MODULE="+so, fmt.Sprintf("KMSD_SESSIONS=%d", networkSessions))...)
	if err := bootstrapAdmin(bin, env); err != nil {
		return err
	}
	k, err := startKMSD(bin, env, filepath.Join(dir, "kmsd.log"))
	if err != nil {
		return err
	}
	defer k.stop()
	keyID, err := createKey(k.addr, "net")
	if err != nil {
		return err
	}
	ops, closePools, err := buildOps(k.addr, keyID, o.size)
	if err != nil {
		return err
	}
	defer closePools()
	ctl.Delay("C_Encrypt", networkDelay)
	ideal := float64(networkSessions) / networkDelay.Seconds()
	var cs cellStats
	var ratios []float64
	for r := 0; r < o.rounds; r++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		rps := measure(k, networkConc, ops[0].src, o.warm, o.dur, &cs) // ops[0] is API 3.0 Encrypt
		ratios = append(ratios, rps/ideal)
	}
	fmt.Fprintf(out, "network-HSM run (+%v per C_Encrypt, %d sessions, %d clients): %.0f req/s, p50 %s ms, p99 %s ms, errors %d; ideal %.0f req/s\n",
		networkDelay, networkSessions, networkConc, median(cs.rps), ms(cs.hist.quantile(0.5)), ms(cs.hist.quantile(0.99)), cs.errs, ideal)
	if cs.errs > 0 {
		fmt.Fprintf(out, "  first error: %s\n", cs.firstErr)
	}
	fmt.Fprintf(out, "network_hsm_ratio_to_ideal: %.2f (per-round %s)\n", median(ratios), fmtList(ratios))
	return nil
}
