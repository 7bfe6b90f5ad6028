//go:build kmsd_faults

package main

import (
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"hsmkms/kms"
)

// Test-only knobs of the kmsd_faults build, read from the environment:
//
//	KMSD_FAULT_POINT=point[#n]   SIGKILL kmsd itself the n-th time (default
//	                             1st) it reaches the named kms fault point
//	KMSD_CLOCK_OFFSET=duration   the domain's clock runs this far ahead
//	KMSD_MAINTENANCE_INTERVAL=d  how often the background maintenance runs
//	KMSD_USAGE_BATCH=n           encryptions per durable usage reservation
//
// The crash-consistency tests build kmsd with -tags kmsd_faults.
func init() {
	kmsConfigHook = func(c *kms.Config) {
		if spec := os.Getenv("KMSD_FAULT_POINT"); spec != "" {
			point, nth, _ := strings.Cut(spec, "#")
			want, err := strconv.Atoi(nth)
			if err != nil || want < 1 {
				want = 1
			}
			var hits atomic.Int64
			c.FaultPoint = func(p string) {
				if p == point && hits.Add(1) == int64(want) {
					syscall.Kill(os.Getpid(), syscall.SIGKILL)
					select {} // never returns
				}
			}
		}
		if d, err := time.ParseDuration(os.Getenv("KMSD_CLOCK_OFFSET")); err == nil {
			c.Clock = func() time.Time { return time.Now().Add(d) }
		}
		if d, err := time.ParseDuration(os.Getenv("KMSD_MAINTENANCE_INTERVAL")); err == nil {
			c.MaintenanceInterval = d
		}
		if n, err := strconv.ParseUint(os.Getenv("KMSD_USAGE_BATCH"), 10, 64); err == nil {
			c.UsageBatch = n
		}
	}
}
