package main

import (
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"hsmkms/hsm"
	"hsmkms/hsm/p11"
	"hsmkms/kms"
)

// hsmMetrics implements p11.Observer with Prometheus metrics: HSM call
// latency and errors by PKCS#11 function, and re-initialisations.
type hsmMetrics struct {
	calls   *prometheus.HistogramVec
	errors  *prometheus.CounterVec
	reinits *prometheus.CounterVec
	byFn    sync.Map // function name -> prometheus.Observer of calls
}

func newHSMMetrics(reg prometheus.Registerer) *hsmMetrics {
	m := &hsmMetrics{
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kmsd_hsm_call_duration_seconds", Help: "HSM operations by PKCS#11 function, session wait included.",
			Buckets: []float64{.00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .5, 1},
		}, []string{"function"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsd_hsm_call_errors_total", Help: "Failed HSM operations by PKCS#11 function and kind (busy, unavailable, not_authentic, key_not_found, invalid_input, other).",
		}, []string{"function", "kind"}),
		reinits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsd_hsm_reinitializations_total", Help: "Re-initialisations of the PKCS#11 module and token by result (ok, failed).",
		}, []string{"result"}),
	}
	reg.MustRegister(m.calls, m.errors, m.reinits)
	return m
}

// Call implements p11.Observer.
// The observer of each function (a handful of names) is looked up once:
// WithLabelValues hashes the label on every call.
func (m *hsmMetrics) Call(fn string, d time.Duration, err error) {
	o, ok := m.byFn.Load(fn)
	if !ok {
		o, _ = m.byFn.LoadOrStore(fn, m.calls.WithLabelValues(fn))
	}
	o.(prometheus.Observer).Observe(d.Seconds())
	if err != nil {
		m.errors.WithLabelValues(fn, errorKind(err)).Inc()
	}
}

// Reinit implements p11.Observer.
func (m *hsmMetrics) Reinit(err error) {
	if err != nil {
		m.reinits.WithLabelValues("failed").Inc()
		return
	}
	m.reinits.WithLabelValues("ok").Inc()
}

func errorKind(err error) string {
	switch {
	case errors.Is(err, hsm.ErrBusy):
		return "busy"
	case errors.Is(err, hsm.ErrUnavailable):
		return "unavailable"
	case errors.Is(err, hsm.ErrNotAuthentic):
		return "not_authentic"
	case errors.Is(err, hsm.ErrKeyNotFound):
		return "key_not_found"
	case errors.Is(err, hsm.ErrInvalidInput):
		return "invalid_input"
	case errors.Is(err, hsm.ErrMisconfigured):
		return "misconfigured"
	case errors.Is(err, hsm.ErrLogin):
		return "login"
	}
	return "other"
}

// registerServiceMetrics exposes the session pool and the usage of every
// key's current version as a fraction of its limit, read at scrape time.
func registerServiceMetrics(reg prometheus.Registerer, tok *p11.Token, svc *kms.Service) {
	gauge := func(name, help string, f func(p11.Stats) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return f(tok.Stats()) })
	}
	counter := func(name, help string, f func(p11.Stats) float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, func() float64 { return f(tok.Stats()) })
	}
	reg.MustRegister(
		gauge("kmsd_hsm_sessions", "Size of the PKCS#11 session pool.", func(s p11.Stats) float64 { return float64(s.Sessions) }),
		gauge("kmsd_hsm_sessions_in_use", "PKCS#11 sessions lent out now.", func(s p11.Stats) float64 { return float64(s.InUse) }),
		gauge("kmsd_hsm_working_copies", "Per-session working copies of CMKs (session objects) in the token now.", func(s p11.Stats) float64 { return float64(s.WorkingCopies) }),
		gauge("kmsd_hsm_available", "1 when the token serves, 0 while it is re-initialised.", func(s p11.Stats) float64 {
			if s.Available {
				return 1
			}
			return 0
		}),
		counter("kmsd_hsm_session_waits_total", "Calls that waited for a free session.", func(s p11.Stats) float64 { return float64(s.Waits) }),
		counter("kmsd_hsm_session_wait_seconds_total", "Time calls spent waiting for a free session.", func(s p11.Stats) float64 { return s.WaitTime.Seconds() }),
		newUsageCollector(svc),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "kmsd_integrity_failures_total",
			Help: "Stored rows (keys, credentials, intents) found failing their integrity check (MAC or generation) since start."},
			func() float64 { return float64(svc.IntegrityFailuresDetected()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "kmsd_integrity_failing_rows",
			Help: "Stored rows failing their integrity check now: not obeyed until an administrator runs kmsd reseal."},
			func() float64 { return float64(len(svc.IntegrityFailures())) }),
	)
}

// usageThresholds are the fractions of the per-version limit counted by
// kmsd_key_versions_usage_over.
var usageThresholds = []float64{0.5, 0.8, 0.95}

// usageCollector reports kms.Service.UsageReport at scrape time, aggregated
// over keys: /metrics is served on the API listener without
// authentication, so it names no key (kms:ListKeys guards the key ids).
// kmsctl (DescribeKey, ListKeys) tells which key is near its limit.
type usageCollector struct {
	svc       *kms.Service
	max, over *prometheus.Desc
}

func newUsageCollector(svc *kms.Service) *usageCollector {
	return &usageCollector{svc: svc,
		max: prometheus.NewDesc("kmsd_key_version_usage_ratio_max",
			"Highest usage, over all keys, of a key's current version as a fraction of the per-version limit (a new version is made at 1).", nil, nil),
		over: prometheus.NewDesc("kmsd_key_versions_usage_over",
			"Keys whose current version has used at least the given fraction of the per-version limit.", []string{"ratio"}, nil)}
}

func (c *usageCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.max; ch <- c.over }

func (c *usageCollector) Collect(ch chan<- prometheus.Metric) {
	highest := 0.0
	over := make([]int, len(usageThresholds))
	for _, u := range c.svc.UsageReport() {
		ratio := 0.0
		if u.Limit > 0 {
			ratio = float64(u.Count) / float64(u.Limit)
		}
		highest = max(highest, ratio)
		for i, t := range usageThresholds {
			if ratio >= t {
				over[i]++
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, highest)
	for i, t := range usageThresholds {
		ch <- prometheus.MustNewConstMetric(c.over, prometheus.GaugeValue, float64(over[i]), strconv.FormatFloat(t, 'f', -1, 64))
	}
}
