package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minmax(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return 0, 0
	}
	return slices.Min(xs), slices.Max(xs)
}

// cellStats accumulates the rounds of one (operation, concurrency) cell.
type cellStats struct {
	rps, srvCPU, allocs, cliCPU []float64
	hist                        hist
	reqs, errs                  uint64
	firstErr                    string
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/1e6) }

// target is a server a cell drives: kmsd, or the software mock
// (mock.go).
type target interface {
	address() string
	snap() snapshot
}

// measure runs one closed-loop cell against k and records it in cs.
func measure(k target, conc int, src func(w int) source, warm, d time.Duration, cs *cellStats) float64 {
	var a, b snapshot
	r := drive(k.address(), conc, src, warm, d, func(start bool) {
		if start {
			a = k.snap()
		} else {
			b = k.snap()
		}
	})
	ok := r.reqs - r.errs
	rps := float64(ok) / r.elapsed.Seconds()
	cs.rps = append(cs.rps, rps)
	if r.reqs > 0 {
		cs.srvCPU = append(cs.srvCPU, float64(b.ticks-a.ticks)*float64(tickDuration/time.Microsecond)/float64(r.reqs))
		cs.allocs = append(cs.allocs, float64(b.allocs-a.allocs)/float64(r.reqs))
		cs.cliCPU = append(cs.cliCPU, float64((b.selfCPU-a.selfCPU)/time.Microsecond)/float64(r.reqs))
	}
	cs.hist.merge(&r.hist)
	cs.reqs += r.reqs
	cs.errs += r.errs
	if cs.firstErr == "" {
		cs.firstErr = r.firstErr
	}
	return rps
}

func machineInfo(out io.Writer) {
	model := "?"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(out, "machine: cpu %q, %d cores (GOMAXPROCS %d), kernel %s, %s\n",
		model, runtime.NumCPU(), runtime.GOMAXPROCS(0), strings.TrimSpace(string(kernel)), runtime.Version())
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func fmtList(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return strings.Join(parts, " ")
}
