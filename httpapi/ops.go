package httpapi

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/time/rate"

	"hsmkms/audit"
	"hsmkms/kms"
)

// This file holds what every request goes through besides its action:
// the request record that feeds the audit trail and the metrics, the cap on
// concurrent requests, per-credential rate limits, and the unauthenticated
// health endpoints.

// AuditSink records one line per request; *audit.Writer implements it.
// Write must return only once the line is recorded.
type AuditSink interface {
	Write(ctx context.Context, e audit.Event) error
}

// reqInfo accumulates what is known about a request while it is served.
type reqInfo struct {
	start      time.Time
	requestID  string
	protocol   string
	action     string // as requested (audit); metrics use a bounded label
	known      bool   // action is one the server serves
	secretID   string
	keyID      string
	keyVersion uint32
	code       string // "0" or the error code
	served     bool   // authenticated and admitted (admit): audited line by line
	verified   bool   // refused after its signature was verified (noteRefused)

	principal *kms.Principal // the caller, once authenticated
	api3      *api3Request   // API 3.0: the request, once authenticated (points to api3Req)
	params    params         // legacy: the parameters, once authenticated
	reply     any            // the success reply, set by the action
	wire      *wireError     // the answer to the error the request failed with

	// The record's own storage for api3 and reply, so that an API 3.0
	// request allocates neither.
	api3Req  api3Request
	envelope api3Envelope

	aws    *awsRequest // AWS KMS API: the request, once authenticated (points to awsReq)
	awsReq awsRequest
}

type reqInfoKey struct{}

func infoFrom(ctx context.Context) *reqInfo {
	i, _ := ctx.Value(reqInfoKey{}).(*reqInfo)
	if i == nil {
		return &reqInfo{} // a throwaway record: callers never check for nil
	}
	return i
}

// apiInfo returns the record of an API request, or nil outside the API
// routes (health, metrics, routing errors).
func apiInfo(c echo.Context) *reqInfo {
	i, _ := c.Request().Context().Value(reqInfoKey{}).(*reqInfo)
	return i
}

// noteKey records the key (and version, 0 if none) a request acted on, for
// the audit trail.
func noteKey(ctx context.Context, keyID string, version uint32) {
	i := infoFrom(ctx)
	i.keyID, i.keyVersion = keyID, version
}

// metrics are the request metrics; nil when no registry is configured.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	inFlight prometheus.Gauge
	refused  *prometheus.CounterVec

	byLabels  sync.Map // labelKey -> *labelMetrics
	labelSets atomic.Int64
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsd_requests_total", Help: "API requests by protocol, action and result code (0 = success).",
		}, []string{"protocol", "action", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "kmsd_request_duration_seconds", Help: "Time to serve an API request, by protocol and action.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"protocol", "action"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kmsd_requests_in_flight", Help: "API requests being served.",
		}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kmsd_requests_refused_total", Help: "Requests and connections refused before being served, by reason (auth, rate, concurrency, connections, connections_per_address).",
		}, []string{"reason"}),
	}
	reg.MustRegister(m.requests, m.duration, m.inFlight, m.refused)
	return m
}

// recordRequest records the audit line of a request (or, for a request
// refused before it was served, its share of a refusal summary) and its
// metrics. It returns the audit trail's error: the request must then be
// answered with errAuditUnavailable, as nothing is served unrecorded.
func (s *Server) recordRequest(c echo.Context, info *reqInfo) error {
	elapsed := time.Since(info.start)
	var auditErr error
	if s.audit != nil && !info.served {
		// Refused before being served: summarised (admission.go).
		secretID := ""
		if info.verified {
			secretID = info.secretID
		}
		s.refusals.add(info.protocol, info.code, c.Request().RemoteAddr, secretID, info.start)
	} else if s.audit != nil {
		ev := audit.Event{
			Time: info.start, RequestID: info.requestID, SecretID: info.secretID, Source: c.Request().RemoteAddr,
			Protocol: info.protocol, Action: truncate(info.action, 64), KeyID: info.keyID, KeyVersion: info.keyVersion,
			Code: info.code, Latency: elapsed,
		}
		if auditErr = recordAudit(s.audit, ev); auditErr != nil {
			s.log.Error("audit trail unavailable: request refused", "requestId", info.requestID, "err", auditErr)
			info.code = "AuditFailure"
		}
	}
	if s.metrics != nil {
		action := info.action
		if !info.known {
			action = "unknown"
		}
		m := s.metrics.forLabels(info.protocol, action, info.code)
		m.requests.Inc()
		m.duration.Observe(elapsed.Seconds())
	}
	return auditErr
}

// recordAudit writes ev to sink. The audit write gets its own short
// deadline: a request whose own deadline has passed must still be recorded.
func recordAudit(sink AuditSink, ev audit.Event) error {
	if rec, ok := sink.(recorder); ok {
		return rec.Record(ev)
	}
	actx, cancel := context.WithTimeout(context.Background(), auditTimeout)
	defer cancel()
	return sink.Write(actx, ev)
}

// auditTimeout bounds the wait for a request's audit line (for a sink
// that is not a recorder), as audit.DefaultTimeout does for *audit.Writer.
const auditTimeout = audit.DefaultTimeout

// recorder is an AuditSink that bounds the wait for a line by itself,
// without a context (*audit.Writer: its watchdog fails lines not written
// within its timeout, audit.DefaultTimeout, so a request needs no timer).
type recorder interface {
	Record(e audit.Event) error
}

// labelMetrics are the request metrics of one (protocol, action, code).
type labelMetrics struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

type labelKey struct{ protocol, action, code string }

// maxLabelSets bounds the cache of forLabels; label sets past it are looked
// up per request (the label values are bounded anyway: known actions or
// "unknown", and the server's own codes).
const maxLabelSets = 4096

// forLabels returns the request counter and duration histogram of a label
// set, cached.
func (m *metrics) forLabels(protocol, action, code string) *labelMetrics {
	k := labelKey{protocol, action, code}
	if v, ok := m.byLabels.Load(k); ok {
		return v.(*labelMetrics)
	}
	lm := &labelMetrics{
		requests: m.requests.WithLabelValues(protocol, action, code),
		duration: m.duration.WithLabelValues(protocol, action),
	}
	if m.labelSets.Add(1) <= maxLabelSets {
		m.byLabels.Store(k, lm)
	}
	return lm
}

var errRateLimited = &authError{"RequestLimitExceeded", 4400, "the request rate of this credential is over its limit, please retry later"}

// rateLimiters holds one token bucket per SecretId.
type rateLimiters struct {
	limit rate.Limit
	burst int
	m     sync.Map // SecretId -> *rate.Limiter
}

func (r *rateLimiters) allow(secretID string) bool {
	if r == nil {
		return true
	}
	l, ok := r.m.Load(secretID)
	if !ok {
		l, _ = r.m.LoadOrStore(secretID, rate.NewLimiter(r.limit, r.burst))
	}
	return l.(*rate.Limiter).Allow()
}

// healthz answers whether the process is alive.
func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers whether kmsd can serve: every readiness check (the token
// answers a cheap PKCS#11 call, the store is reachable) must pass within a
// second. It tells which check failed, never why.
//
// The checks borrow an HSM session and a store connection, and /readyz is
// unauthenticated: a result is reused for ReadyCacheTTL, and calls that
// arrive while the checks run wait for that run instead of starting their
// own, so /readyz takes at most one session per ReadyCacheTTL whatever the
// rate of calls.
func (s *Server) readyz(c echo.Context) error {
	r, err := s.ready.get(c.Request().Context(), s.cfg.ReadyCacheTTL, s.runReadyChecks)
	if err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "not ready"})
	}
	return c.JSON(r.status, r.body)
}

// readyResult is the outcome of one run of the readiness checks.
type readyResult struct {
	status int
	body   map[string]string // never modified once made
}

// readyCache holds the last readiness result and the run in progress.
type readyCache struct {
	mu      sync.Mutex
	last    readyResult
	at      time.Time     // when last was made; zero before the first run
	running chan struct{} // closed when the run in progress ends; nil if none
}

// get returns a result made less than ttl ago, waiting for the run in
// progress or starting one (run) if there is none. It returns ctx's error
// if ctx ends while waiting; the run goes on for the other callers.
func (rc *readyCache) get(ctx context.Context, ttl time.Duration, run func() readyResult) (readyResult, error) {
	for {
		rc.mu.Lock()
		if !rc.at.IsZero() && time.Since(rc.at) < ttl {
			r := rc.last
			rc.mu.Unlock()
			return r, nil
		}
		wait := rc.running
		if wait == nil {
			done := make(chan struct{})
			rc.running = done
			rc.mu.Unlock()
			r := run()
			rc.mu.Lock()
			rc.last, rc.at, rc.running = r, time.Now(), nil
			rc.mu.Unlock()
			close(done)
			return r, nil
		}
		rc.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return readyResult{}, ctx.Err()
		}
	}
}

// runReadyChecks runs every readiness check at once, within a second. It
// does not depend on any caller's context: its result is shared.
func (s *Server) runReadyChecks() readyResult {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(s.cfg.Ready))
	for name, check := range s.cfg.Ready {
		go func() { results <- result{name, check(ctx)} }()
	}
	status, out := http.StatusOK, map[string]string{}
	for range s.cfg.Ready {
		r := <-results
		if r.err != nil {
			status, out[r.name] = http.StatusServiceUnavailable, "unavailable"
			s.log.Warn("readiness check failed", "check", r.name, "err", r.err)
		} else {
			out[r.name] = "ok"
		}
	}
	out["status"] = "ready"
	if status != http.StatusOK {
		out["status"] = "not ready"
	}
	if s.cfg.Degraded != nil {
		for name, n := range s.cfg.Degraded() {
			if n > 0 {
				out[name] = "degraded"
				if status == http.StatusOK {
					out["status"] = "degraded"
				}
			}
		}
	}
	return readyResult{status: status, body: out}
}

func metricsHandler(reg *prometheus.Registry) echo.HandlerFunc {
	h := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	return echo.WrapHandler(h)
}
