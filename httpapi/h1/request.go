package h1

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httputil"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// protocolError is a request the server refuses with an HTTP status; the
// connection is closed after the answer.
type protocolError struct {
	status int
	text   string
}

func (e *protocolError) Error() string { return strconv.Itoa(e.status) + " " + e.text }

func badRequest(text string) error { return &protocolError{http.StatusBadRequest, text} }

var errHeaderTooLarge = &protocolError{http.StatusRequestHeaderFieldsTooLarge, "request header too large"}

// head is what parseHead found in a request's line and header, besides
// the fields it fills in the request.
type head struct {
	chunked        bool
	expectContinue bool
}

// readRequest reads the next request's line and header from the
// connection and sets up its body. Errors are *protocolError for requests
// to refuse with an answer, or I/O errors.
func (c *conn) readRequest() (*http.Request, error) {
	limit := c.srv.MaxHeaderBytes
	if limit <= 0 {
		limit = defaultMaxHeaderBytes
	}
	hdr := c.hdr[:0]
	lineStart, lines := 0, 0
	for {
		frag, err := c.br.ReadSlice('\n')
		if len(hdr)+len(frag) > limit {
			return nil, errHeaderTooLarge
		}
		hdr = append(hdr, frag...)
		if err == bufio.ErrBufferFull {
			continue // a line longer than the buffer: keep reading it
		}
		if err != nil {
			if err == io.EOF && len(hdr) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		line := hdr[lineStart:]
		lineStart = len(hdr)
		if lines > 0 && (len(line) == 1 || len(line) == 2 && line[0] == '\r') {
			break // the empty line after the header
		}
		lines++
	}
	c.hdr = hdr
	// The request, its header map, URL and body are the connection's,
	// reused for each request (a handler may not retain them); the
	// header's text is a new string, so values handed out stay valid.
	req := &c.req
	*req = *c.tmpl
	if c.hmap == nil {
		c.hmap = make(http.Header, 16)
	}
	clear(c.hmap)
	req.Header = c.hmap
	c.url = url.URL{}
	h, err := parseHeadInto(string(hdr), req, &c.url, &c.vals)
	if err != nil {
		return nil, err
	}
	switch {
	case h.chunked:
		c.rbody = body{c: c, chunked: httputil.NewChunkedReader(c.br), expect: h.expectContinue}
		req.Body = &c.rbody
	case req.ContentLength > 0:
		c.rbody = body{c: c, remaining: req.ContentLength, expect: h.expectContinue}
		req.Body = &c.rbody
	default:
		req.Body = http.NoBody
	}
	return req, nil
}

// parseHead parses a request's line and header, text (each line ended by
// CRLF or LF, the empty line included), into req: Method, RequestURI, URL,
// Proto*, Header, Host, ContentLength (-1 when chunked), TransferEncoding
// and Close. Its errors are *protocolError.
func parseHead(text string, req *http.Request) (head, error) {
	var vals []string
	return parseHeadInto(text, req, nil, &vals)
}

// parseHeadInto is parseHead with scratch space: req.Header, if not nil,
// is an empty map to fill; u, if not nil, receives the URL of a "/" target;
// *vals is reused for the header's values.
func parseHeadInto(text string, req *http.Request, u *url.URL, valsp *[]string) (head, error) {
	var h head
	line, rest, ok := cutLine(text)
	if !ok {
		return h, badRequest("malformed request line")
	}
	method, line, ok1 := strings.Cut(line, " ")
	target, proto, ok2 := strings.Cut(line, " ")
	if !ok1 || !ok2 || !isToken(method) || target == "" || !validTarget(target) {
		return h, badRequest("malformed request line")
	}
	switch proto {
	case "HTTP/1.1":
		req.ProtoMinor = 1
	case "HTTP/1.0":
	default:
		if strings.HasPrefix(proto, "HTTP/") && len(proto) == 8 && proto[6] == '.' && isDigit(proto[5]) && isDigit(proto[7]) {
			return h, &protocolError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
		}
		return h, badRequest("malformed request line")
	}
	req.Method, req.RequestURI, req.Proto, req.ProtoMajor = method, target, proto, 1
	switch {
	case target == "/":
		if u == nil {
			u = new(url.URL)
		}
		u.Path = "/"
		req.URL = u
	case method == http.MethodConnect && target[0] != '/':
		// The authority-form ("CONNECT host:port"), read as net/http
		// does; url.ParseRequestURI alone would take "host" for a scheme.
		u, err := url.ParseRequestURI("http://" + target)
		if err != nil {
			return h, badRequest("malformed request target")
		}
		u.Scheme = ""
		req.URL = u
	default:
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return h, badRequest("malformed request target")
		}
		req.URL = u
	}

	// Count the header lines to size the map and its values at once.
	n := strings.Count(rest, "\n") - 1
	hdr := req.Header
	if hdr == nil {
		hdr = make(http.Header, max(n, 0))
	}
	if cap(*valsp) < n {
		*valsp = make([]string, max(n, 16))
	}
	vals := (*valsp)[:cap(*valsp)]
	var hosts, lengths, codings int
	var host, length, coding string
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			return h, badRequest("malformed header")
		}
		if line == "" {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return h, badRequest("folded header line")
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok || !isToken(name) {
			return h, badRequest("malformed header line")
		}
		value = strings.Trim(value, " \t")
		if !validValue(value) {
			return h, badRequest("invalid header value")
		}
		key := canonical(name)
		switch key {
		case "Host":
			hosts++
			host = value
			continue // kept in req.Host only, as net/http does
		case "Content-Length":
			if lengths > 0 && value != length {
				return h, badRequest("conflicting Content-Length")
			}
			lengths++
			length = value
		case "Transfer-Encoding":
			codings++
			coding = value
			continue // kept in req.TransferEncoding, as net/http does
		}
		if v, ok := hdr[key]; ok {
			hdr[key] = append(v, value)
		} else {
			vals[0] = value
			hdr[key] = vals[0:1:1]
			vals = vals[1:]
		}
	}
	req.Header = hdr

	// Host: exactly one in HTTP/1.1 (RFC 9112 §3.2); the target's
	// authority, if any, wins, as in net/http.
	if hosts > 1 {
		return h, badRequest("more than one Host header")
	}
	if hosts == 0 && req.ProtoMinor == 1 {
		return h, badRequest("missing required Host header")
	}
	if !validHost(host) {
		return h, badRequest("malformed Host header")
	}
	req.Host = host
	if req.URL.Host != "" {
		req.Host = req.URL.Host
	}

	// Framing (RFC 9112 §6): chunked or a Content-Length, never both.
	switch {
	case codings > 0:
		if req.ProtoMinor == 0 {
			return h, badRequest("Transfer-Encoding in an HTTP/1.0 request")
		}
		if codings > 1 || !strings.EqualFold(coding, "chunked") {
			return h, &protocolError{http.StatusNotImplemented, "unsupported transfer encoding"}
		}
		if lengths > 0 {
			return h, badRequest("both Transfer-Encoding and Content-Length")
		}
		h.chunked = true
		req.TransferEncoding = []string{"chunked"}
		req.ContentLength = -1
	case lengths > 0:
		n, ok := parseLength(length)
		if !ok {
			return h, badRequest("malformed Content-Length")
		}
		req.ContentLength = n
	}

	// Persistence (RFC 9112 §9.3).
	conn := hdr["Connection"]
	if req.ProtoMinor == 1 {
		req.Close = hasToken(conn, "close")
	} else {
		req.Close = !hasToken(conn, "keep-alive") || hasToken(conn, "close")
	}

	if e, ok := hdr["Expect"]; ok {
		if len(e) != 1 || !strings.EqualFold(e[0], "100-continue") {
			return h, &protocolError{http.StatusExpectationFailed, "unsupported Expect"}
		}
		h.expectContinue = req.ProtoMinor == 1 && (h.chunked || req.ContentLength > 0)
	}
	return h, nil
}

// cutLine returns the first line of s without its CRLF or LF, and the rest.
// A line with a CR anywhere else is malformed (ok false), as is a last
// line without LF.
func cutLine(s string) (line, rest string, ok bool) {
	i := strings.IndexByte(s, '\n')
	if i < 0 {
		return "", s, false
	}
	line, rest = s[:i], s[i+1:]
	if strings.HasSuffix(line, "\r") {
		line = line[:len(line)-1]
	}
	if strings.IndexByte(line, '\r') >= 0 {
		return "", s, false
	}
	return line, rest, true
}

// parseLength parses a Content-Length value: decimal digits only.
func parseLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

// hasToken reports whether a comma-separated header (all its lines) lists
// token, case-insensitively.
func hasToken(vals []string, token string) bool {
	for _, v := range vals {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.Trim(t, " \t"), token) {
				return true
			}
		}
	}
	return false
}

func isDigit(b byte) bool { return '0' <= b && b <= '9' }

// tokenChars are the characters of an RFC 9110 token (method, field name).
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChars[s[i]] {
			return false
		}
	}
	return true
}

// validTarget: printable ASCII without spaces (RFC 9112 §3.2).
func validTarget(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] >= 0x7f {
			return false
		}
	}
	return true
}

// validValue: no control characters but HTAB (RFC 9110 §5.5).
func validValue(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// hostChars are the characters net/http accepts in a Host header.
var hostChars = func() (t [256]bool) {
	for c := range tokenChars {
		t[c] = tokenChars[c]
	}
	for _, c := range "!$&'()*+,;=:[]_~-." {
		t[c] = true
	}
	t['#'], t['^'], t['`'], t['|'] = false, false, false, false
	return t
}()

func validHost(s string) bool {
	for i := 0; i < len(s); i++ {
		if !hostChars[s[i]] {
			return false
		}
	}
	return true
}

// canonical returns the canonical form of a header name (a token), without
// allocating for the names Tencent clients send.
func canonical(name string) string {
	for _, k := range commonHeaders {
		if len(k) == len(name) && strings.EqualFold(k, name) {
			return k
		}
	}
	return textproto.CanonicalMIMEHeaderKey(name)
}

var commonHeaders = [...]string{
	"Host", "Content-Type", "Content-Length", "Authorization", "X-Tc-Action", "X-Tc-Version",
	"X-Tc-Timestamp", "X-Tc-Region", "X-Tc-Language", "X-Tc-Requestclient", "X-Tc-Token",
	"User-Agent", "Accept", "Accept-Encoding", "Connection", "Expect", "Transfer-Encoding",
	"X-Tc-Traceid",
}

// body is a request body read from the connection. It sends "100 Continue"
// on the first read when the client asked for it.
type body struct {
	c         *conn
	remaining int64     // Content-Length bodies
	chunked   io.Reader // chunked bodies
	expect    bool      // 100 Continue owed before the first read
	eof       bool      // the whole body was read
	err       error     // sticky read error; the connection cannot be reused
}

func (b *body) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.expect {
		b.expect = false
		// Not once the final response's header is out: the 100 would
		// land in its body.
		if !b.c.resp.streaming {
			if _, err := b.c.nc.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n")); err != nil {
				b.err = err
				return 0, err
			}
		}
	}
	if b.chunked != nil {
		n, err := b.chunked.Read(p)
		if err == io.EOF {
			// The trailer section, discarded (bounded like a header).
			if err = b.readTrailer(); err == nil {
				b.eof = true
				return n, io.EOF
			}
		}
		if err != nil {
			err = b.fail(err)
		}
		return n, err
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.c.br.Read(p)
	b.remaining -= int64(n)
	if b.remaining == 0 {
		b.eof = true
		return n, io.EOF
	}
	if err != nil {
		err = b.fail(err)
	}
	return n, err
}

// fail makes err the body's sticky error (an EOF before the body's end is
// unexpected) and returns it.
func (b *body) fail(err error) error {
	if err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	b.err = err
	return err
}

func (b *body) readTrailer() error {
	total := 0
	for {
		line, err := b.c.br.ReadSlice('\n')
		if err != nil {
			if err == bufio.ErrBufferFull {
				err = errHeaderTooLarge
			}
			return err
		}
		total += len(line)
		if total > defaultMaxHeaderBytes {
			return errHeaderTooLarge
		}
		if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
			return nil
		}
	}
}

// Close does nothing: the server reads what is left (or closes the
// connection) after the handler returns.
func (b *body) Close() error { return nil }

// done reports whether the body was read to its end.
func (b *body) done() bool { return b.eof }

// drain reads and discards the rest of the body, up to limit bytes; it
// reports whether the body ended cleanly within the limit. A body owing a
// 100 Continue was never wanted by the handler: the client may not send it
// at all, so it is not drained.
func (b *body) drain(limit int64) bool {
	if b.expect {
		return false
	}
	n, err := io.CopyN(io.Discard, b, limit+1)
	return err == io.EOF && n <= limit
}
