package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"runtime/metrics"
	"time"
)

// The debug listener (off by default) serves runtime metrics and pprof for
// make bench and for profiling. It is unauthenticated, so it may only bind a
// loopback address; it is a separate listener, never the API's.
//
//	KMSD_DEBUG_ADDR=127.0.0.1:0   enable it (the bound address is logged as "debug listening")
//
// Routes: GET /debug/metrics (JSON: cumulative heap allocations, GC cycles,
// goroutines, heap bytes) and /debug/pprof/...

// debugMetrics are the runtime/metrics samples /debug/metrics reports, by
// the JSON name they are reported under.
var debugMetrics = map[string]string{
	"allocs_objects":  "/gc/heap/allocs:objects",
	"allocs_bytes":    "/gc/heap/allocs:bytes",
	"frees_objects":   "/gc/heap/frees:objects",
	"gc_cycles":       "/gc/cycles/total:gc-cycles",
	"goroutines":      "/sched/goroutines:goroutines",
	"heap_live_bytes": "/gc/heap/live:bytes",
	"total_bytes":     "/memory/classes/total:bytes",
}

func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/metrics", func(w http.ResponseWriter, r *http.Request) {
		names := make([]string, 0, len(debugMetrics))
		samples := make([]metrics.Sample, 0, len(debugMetrics))
		for k, m := range debugMetrics {
			names = append(names, k)
			samples = append(samples, metrics.Sample{Name: m})
		}
		metrics.Read(samples)
		out := make(map[string]uint64, len(samples))
		for i, s := range samples {
			if s.Value.Kind() == metrics.KindUint64 {
				out[names[i]] = s.Value.Uint64()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(out)
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// checkLoopback refuses any address that is not a literal loopback IP or
// "localhost".
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("KMSD_DEBUG_ADDR %q: %v", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("KMSD_DEBUG_ADDR %q: the debug listener is unauthenticated and may only bind a loopback address (127.0.0.1, ::1)", addr)
}

// startDebug starts the debug listener if KMSD_DEBUG_ADDR is set. stop
// closes it.
func startDebug(env func(string) (string, bool), log *slog.Logger) (stop func(), err error) {
	addr, ok := env("KMSD_DEBUG_ADDR")
	if !ok || addr == "" {
		return func() {}, nil
	}
	if err := checkLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("debug listener: %w", err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return nil, errors.New("debug listener: bound a non-loopback address")
	}
	srv := &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	log.Warn("debug listening", "addr", ln.Addr().String())
	return func() { _ = srv.Close() }, nil
}
