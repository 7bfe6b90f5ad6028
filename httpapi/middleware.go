package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
)

// The Echo middleware of the API routes, outermost first:
//
//	requestScope  request id, request record, deadline
//	record        audit line and metrics; the success reply
//	authenticate  per protocol (authenticateAPI3, authenticateLegacy)
//	limitRate     the caller's rate limit
//	admit         a concurrency slot
//
// then the protocol's handler (serveAPI3, serveLegacy), which runs the
// action. A failure anywhere is returned as an error, recorded by record
// and answered by handleHTTPError, the one place an error becomes a reply.

// chain wraps h in mw, the first outermost, as Echo applies route
// middleware; composed once here rather than by Echo v4 on every request
// (its route middleware is re-applied per request: a closure each).
func chain(h echo.HandlerFunc, mw ...echo.MiddlewareFunc) echo.HandlerFunc {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

// apiRoute returns the middleware of an API route of protocol, around
// authenticate.
func (s *Server) apiRoute(protocol string, authenticate echo.MiddlewareFunc) []echo.MiddlewareFunc {
	return []echo.MiddlewareFunc{s.requestScope(protocol), s.record, authenticate, s.limitRate, s.admitRequest}
}

// requestScope gives the request its id (the RequestIDHeader and the
// reply's), its record (infoFrom) and its deadline,
// Config.RequestTimeout, by an ordinary context.WithTimeout.
func (s *Server) requestScope(protocol string) echo.MiddlewareFunc {
	return func(next echo.HandlerFunc) echo.HandlerFunc {
		return func(c echo.Context) error {
			info := &reqInfo{start: time.Now(), requestID: newRequestID(), protocol: protocol}
			c.Response().Header().Set(RequestIDHeader, info.requestID)
			r := c.Request()
			ctx, cancel := context.WithTimeout(context.WithValue(r.Context(), reqInfoKey{}, info), s.cfg.RequestTimeout)
			defer cancel()
			c.SetRequest(r.WithContext(ctx))
			return next(c)
		}
	}
}

// record ends a request: it maps a failure to its codes, writes the audit
// line and the metrics, then sends the success reply or hands the error
// to Echo's error handler. A request whose audit line cannot be written
// fails (errAuditUnavailable): nothing is served unrecorded. Secret bytes
// in the reply (wiper) are cleared once it is written or refused.
func (s *Server) record(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		info := infoFrom(c.Request().Context())
		defer func() { wipeReply(info.reply) }()
		err := next(c)
		if err != nil {
			s.noteRefused(info, err)
			w := s.toWireError(err, info.requestID)
			info.wire, info.code = &w, w.codeIn(info.protocol)
		} else {
			info.code = "0"
		}
		if s.recordRequest(c, info) != nil {
			err = errAuditUnavailable
			w := s.toWireError(err, info.requestID)
			info.wire = &w
		}
		if err != nil {
			return err
		}
		if info.protocol == protocolAWS {
			return sendJSONAs(c, http.StatusOK, awsContentType, info.reply)
		}
		return sendJSON(c, http.StatusOK, info.reply)
	}
}

// replyEncoder is an encoding/json Encoder bound to its own buffer,
// reused across requests (replyEncoders).
type replyEncoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

// replyEncoders holds the reply encoders not in use.
var replyEncoders = sync.Pool{New: func() any {
	r := new(replyEncoder)
	r.enc = json.NewEncoder(&r.buf)
	return r
}}

// maxPooledReply is the largest reply buffer kept for reuse; the buffers
// of larger replies (long key lists) are left to the garbage collector.
const maxPooledReply = 64 << 10

// sendJSON answers c with code and v as Echo's c.JSON does (encoding/json,
// HTML-safe escaping, a final newline, Content-Type application/json),
// but encodes into a pooled buffer with a pooled Encoder and does not
// parse the query string for Echo's "pretty" switch: API replies are never
// indented. The buffer is cleared once written, so no reply (a Decrypt's
// plaintext) stays in memory past its request.
func sendJSON(c echo.Context, code int, v any) error {
	return sendJSONAs(c, code, echo.MIMEApplicationJSON, v)
}

// sendJSONAs is sendJSON with the Content-Type contentType.
func sendJSONAs(c echo.Context, code int, contentType string, v any) error {
	r := replyEncoders.Get().(*replyEncoder)
	r.buf.Reset()
	err := r.enc.Encode(v)
	if err == nil {
		err = c.Blob(code, contentType, r.buf.Bytes())
	}
	clear(r.buf.Bytes())
	if r.buf.Cap() <= maxPooledReply {
		replyEncoders.Put(r)
	}
	return err
}

// limitRate applies the caller's rate limit, once its signature is
// verified (so nobody can spend another caller's budget).
func (s *Server) limitRate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if !s.limits.allow(infoFrom(c.Request().Context()).secretID) {
			s.countRefusal(refusedRate)
			return errRateLimited
		}
		return next(c)
	}
}

// admitRequest takes a concurrency slot for an authenticated request for
// the time of its action, or refuses it (admission.go).
func (s *Server) admitRequest(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if err := s.admit(infoFrom(c.Request().Context())); err != nil {
			return err
		}
		defer s.release()
		return next(c)
	}
}

// handleHTTPError is Echo's HTTPErrorHandler: the one place an error
// becomes a reply. An API request's error is answered in its protocol,
// with HTTP 200 as Tencent does; routing errors (unknown path, wrong
// method) and anything else are answered without internals.
func (s *Server) handleHTTPError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	if info := apiInfo(c); info != nil {
		w := info.wire
		if w == nil {
			m := s.toWireError(err, info.requestID)
			w = &m
		}
		if info.protocol == protocolAWS {
			c.Response().Header().Set(awsRequestIDHeader, info.requestID)
			sendAWSError(c, w)
			return
		}
		var reply any = legacyReply{Code: w.legacyCode, Message: w.legacyMsg, RequestID: info.requestID}
		if info.protocol == protocolAPI3 {
			reply = api3Envelope{Response: api3ErrorBody{Error: &apiError{Code: w.code, Message: w.message}, RequestID: info.requestID}}
		}
		_ = sendJSON(c, http.StatusOK, reply)
		return
	}
	status := http.StatusInternalServerError
	msg := "internal error"
	if he, ok := err.(*echo.HTTPError); ok {
		status = he.Code
		msg = http.StatusText(status)
	} else {
		s.log.Error("unhandled request error", "path", c.Path(), "err", err)
	}
	rid := newRequestID()
	c.Response().Header().Set(RequestIDHeader, rid)
	_ = c.JSON(status, map[string]any{"code": status, "message": msg, "requestId": rid})
}

// The protocols, as the audit trail and the metrics name them.
const (
	protocolAPI3   = "api3"
	protocolLegacy = "legacy"
)

// codeIn returns the code w is answered with in protocol, as the audit
// trail and the metrics record it.
func (w wireError) codeIn(protocol string) string {
	switch protocol {
	case protocolAPI3:
		return w.code
	case protocolAWS:
		return w.awsType
	}
	return strconv.Itoa(w.legacyCode)
}
