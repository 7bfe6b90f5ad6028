package h1

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// response is the http.ResponseWriter of one request. Bodies up to
// maxBuffered bytes are kept and sent with the header in one write, with a
// Content-Length; beyond that (or after Flush) the response is streamed,
// chunked in HTTP/1.1 unless the handler declared a Content-Length.
type response struct {
	c           *conn
	req         *http.Request
	body        *body // the request body as the server made it, nil if none
	header      http.Header
	status      int
	wroteHeader bool
	buf         []byte
	streaming   bool
	chunked     bool
	declared    int64 // Content-Length declared by the handler when streaming; -1 none
	written     int64 // body bytes streamed
	closeAfter  bool
	err         error
}

func (w *response) reset(c *conn, req *http.Request) {
	h := w.header
	if h == nil {
		h = make(http.Header, 4)
	} else {
		clear(h)
	}
	b, _ := req.Body.(*body)
	*w = response{c: c, req: req, body: b, header: h, buf: w.buf[:0], declared: -1}
	w.closeAfter = req.Close
}

// Header returns the response header map. Changes after the header is on
// the wire (streaming, Flush) have no effect; unlike net/http, changes
// after WriteHeader still apply to a buffered response.
func (w *response) Header() http.Header { return w.header }

// WriteHeader records the status. Informational statuses are ignored; a
// second call is ignored.
func (w *response) WriteHeader(code int) {
	if code < 100 || code > 999 {
		panic("h1: invalid WriteHeader code " + strconv.Itoa(code))
	}
	if w.wroteHeader || code < 200 {
		return
	}
	w.wroteHeader = true
	w.status = code
	if hasToken(w.header["Connection"], "close") {
		w.closeAfter = true
	}
}

func bodyAllowed(status int) bool {
	return status != http.StatusNoContent && status != http.StatusNotModified
}

// Write buffers (or streams) p as body.
func (w *response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	if !w.streaming {
		if len(w.buf)+len(p) <= maxBuffered {
			w.buf = append(w.buf, p...)
			return len(p), nil
		}
		w.startStreaming(p)
		if w.err != nil {
			return 0, w.err
		}
	}
	if err := w.stream(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush sends what is buffered and streams the rest of the response.
func (w *response) Flush() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.streaming && bodyAllowed(w.status) && w.err == nil {
		w.startStreaming(nil)
	}
}

// startStreaming writes the header and the buffered body; p is the data
// about to be written, for sniffing the Content-Type if nothing is buffered.
func (w *response) startStreaming(p []byte) {
	w.streaming = true
	if _, ok := w.header["Content-Type"]; !ok {
		if len(w.buf) > 0 {
			p = w.buf
		}
		if len(p) > 0 {
			w.header.Set("Content-Type", http.DetectContentType(p))
		}
	}
	if w.body != nil && w.body.expect {
		// The final response goes out before the client was asked for
		// the body: it may or may not send it now, so the connection
		// cannot continue (and body.Read no longer sends 100 Continue).
		w.closeAfter = true
	}
	if cl := w.header.Get("Content-Length"); cl != "" {
		if n, ok := parseLength(cl); ok {
			w.declared = n
		}
	}
	switch {
	case w.declared >= 0:
	case w.req.ProtoMinor == 1:
		w.chunked = true
	default:
		w.closeAfter = true // HTTP/1.0: the end of the body is the close
	}
	out := w.appendHeader(w.c.out[:0], -1)
	w.c.out = out
	if err := w.writeRaw(out); err != nil {
		return
	}
	buf := w.buf
	w.buf = w.buf[:0]
	if len(buf) > 0 {
		_ = w.stream(buf)
	}
}

func (w *response) stream(p []byte) error {
	if w.req.Method == http.MethodHead || len(p) == 0 {
		return nil
	}
	w.written += int64(len(p))
	if w.declared >= 0 && w.written > w.declared {
		w.closeAfter = true
		return http.ErrContentLength
	}
	if !w.chunked {
		return w.writeRaw(p)
	}
	out := strconv.AppendInt(w.c.out[:0], int64(len(p)), 16)
	out = append(out, "\r\n"...)
	out = append(out, p...)
	out = append(out, "\r\n"...)
	w.c.out = out[:0]
	return w.writeRaw(out)
}

func (w *response) writeRaw(b []byte) error {
	if w.err != nil {
		return w.err
	}
	if _, err := w.c.nc.Write(b); err != nil {
		w.err = err
		w.closeAfter = true
	}
	return w.err
}

// finish completes the response: one write for a buffered one.
func (w *response) finish() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if b := w.body; b != nil && !b.eof {
		switch {
		case b.expect:
			// The handler never read a body it was offered: the client
			// may or may not send it now, so the connection cannot
			// continue.
			w.closeAfter = true
		case b.err != nil, b.chunked == nil && b.remaining > maxDrain:
			// What is left of the body cannot be read, or is more than
			// will be drained: say now that the connection closes.
			w.closeAfter = true
		}
	}
	if w.c.srv.shutting.Load() {
		w.closeAfter = true
	}
	if w.streaming {
		if w.chunked && w.err == nil && w.req.Method != http.MethodHead {
			_ = w.writeRaw([]byte("0\r\n\r\n"))
		}
		if w.declared >= 0 && w.written != w.declared && w.req.Method != http.MethodHead {
			w.closeAfter = true
		}
		return w.err
	}
	n := -1
	if bodyAllowed(w.status) {
		n = len(w.buf)
	}
	out := w.appendHeader(w.c.out[:0], n)
	if n > 0 && w.req.Method != http.MethodHead {
		out = append(out, w.buf...)
	}
	w.c.out = out
	return w.writeRaw(out)
}

// appendHeader appends the status line and header. length is the body's
// length when known (buffered), -1 when streaming or when the status has
// no body.
func (w *response) appendHeader(b []byte, length int) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(w.status)...)
	b = append(b, "\r\n"...)
	if length > 0 { // a HEAD response's too, to match the GET's
		if _, ok := w.header["Content-Type"]; !ok {
			w.header.Set("Content-Type", http.DetectContentType(w.buf))
		}
	}
	keys := w.c.keys[:0]
	for k := range w.header {
		switch k {
		case "Content-Length", "Transfer-Encoding", "Connection":
			continue // framing is the server's
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	w.c.keys = keys[:0]
	for _, k := range keys {
		if !isToken(k) {
			continue
		}
		for _, v := range w.header[k] {
			b = append(b, k...)
			b = append(b, ": "...)
			b = appendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	if _, ok := w.header["Date"]; !ok {
		b = append(b, "Date: "...)
		b = append(b, httpDate()...)
		b = append(b, "\r\n"...)
	}
	switch {
	case length >= 0:
		// A HEAD response keeps the length the handler declared, if any.
		if w.req.Method == http.MethodHead && length == 0 {
			if cl := w.header.Get("Content-Length"); cl != "" {
				if _, ok := parseLength(cl); ok {
					b = append(b, "Content-Length: "...)
					b = append(b, cl...)
					b = append(b, "\r\n"...)
					break
				}
			}
		}
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(length), 10)
		b = append(b, "\r\n"...)
	case w.streaming && w.declared >= 0:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, w.declared, 10)
		b = append(b, "\r\n"...)
	case w.streaming && w.chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	}
	switch {
	case w.closeAfter:
		b = append(b, "Connection: close\r\n"...)
	case w.req.ProtoMinor == 0:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	return append(b, "\r\n"...)
}

// appendValue appends a header value with CR and LF replaced by spaces (no
// response splitting), as net/http does.
func appendValue(b []byte, v string) []byte {
	if strings.IndexByte(v, '\r') < 0 && strings.IndexByte(v, '\n') < 0 {
		return append(b, v...)
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// httpDate returns the current time in the Date header's format, made at
// most once per second.
func httpDate() string {
	now := time.Now()
	sec := now.Unix()
	if d := lastDate.Load(); d != nil && d.sec == sec {
		return d.text
	}
	d := &dateText{sec: sec, text: now.UTC().Format(http.TimeFormat)}
	lastDate.Store(d)
	return d.text
}

type dateText struct {
	sec  int64
	text string
}

var lastDate atomic.Pointer[dateText]
