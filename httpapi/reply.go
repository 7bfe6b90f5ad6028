package httpapi

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"

	"github.com/labstack/echo/v4"
)

// This file writes the replies of the hot actions (API 3.0 Encrypt and
// Decrypt, legacy Encrypt and Decrypt) without reflection, into a pooled
// buffer, byte for byte as Echo's c.JSON (encoding/json's Encoder) would:
// same members, same order, same escaping, same trailing newline, one
// Write. Any other reply, and any request with a query string (Echo
// honours ?pretty), goes through c.JSON.

var replyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// writeReply writes reply with HTTP 200, as c.JSON(http.StatusOK, reply)
// does.
func (s *Server) writeReply(c echo.Context, reply any) error {
	if c.Request().URL.RawQuery != "" || s.echo.Debug {
		return c.JSON(http.StatusOK, reply)
	}
	bp := replyBufs.Get().(*[]byte)
	b, ok := appendReply((*bp)[:0], reply)
	if !ok {
		replyBufs.Put(bp)
		return c.JSON(http.StatusOK, reply)
	}
	resp := c.Response()
	if h := resp.Header(); len(h[echo.HeaderContentType]) == 0 {
		h[echo.HeaderContentType] = jsonContentType
	}
	resp.WriteHeader(http.StatusOK)
	_, err := resp.Write(b)
	if cap(b) <= 64<<10 {
		*bp = b
		replyBufs.Put(bp)
	}
	return err
}

// jsonContentType is shared by every reply's header: header values are
// never modified in place (appending to it makes a new array).
var jsonContentType = []string{echo.MIMEApplicationJSON}

// appendReply appends the JSON of the hot replies and a newline; ok is
// false for any other type.
func appendReply(b []byte, reply any) ([]byte, bool) {
	switch r := reply.(type) {
	case api3Envelope:
		b = append(b, `{"Response":`...)
		switch resp := r.Response.(type) {
		case *encryptResponse:
			b = append(b, `{"CiphertextBlob":`...)
			b = appendJSONString(b, resp.CiphertextBlob)
			b = append(b, `,"KeyId":`...)
			b = appendJSONString(b, resp.KeyID)
			b = append(b, `,"RequestId":`...)
			b = appendJSONString(b, resp.RequestID)
		case *decryptResponse:
			b = append(b, `{"KeyId":`...)
			b = appendJSONString(b, resp.KeyID)
			b = append(b, `,"Plaintext":`...)
			b = appendJSONString(b, resp.Plaintext)
			b = append(b, `,"RequestId":`...)
			b = appendJSONString(b, resp.RequestID)
		default:
			return b, false
		}
		return append(b, "}}\n"...), true
	case legacyEncryptReply:
		b = appendLegacyHead(b, r.legacyReply)
		b = append(b, `,"keyId":`...)
		b = appendJSONString(b, r.KeyID)
		b = append(b, `,"ciphertextBlob":`...)
		b = appendJSONString(b, r.CiphertextBlob)
		return append(b, "}\n"...), true
	case legacyDecryptReply:
		b = appendLegacyHead(b, r.legacyReply)
		b = append(b, `,"keyId":`...)
		b = appendJSONString(b, r.KeyID)
		b = append(b, `,"plaintext":`...)
		b = appendJSONString(b, r.Plaintext)
		return append(b, "}\n"...), true
	}
	return b, false
}

// appendLegacyHead appends `{"code":..,"message":..,"requestId":..` (no
// closing brace).
func appendLegacyHead(b []byte, r legacyReply) []byte {
	b = append(b, `{"code":`...)
	b = strconv.AppendInt(b, int64(r.Code), 10)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, r.Message)
	b = append(b, `,"requestId":`...)
	return appendJSONString(b, r.RequestID)
}

// appendJSONString appends s as encoding/json renders a string (HTML
// characters escaped): printable ASCII other than " \ < > & is copied;
// anything else takes json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	if !jsonPlain(s) {
		q, _ := json.Marshal(s) // cannot fail for a string
		return append(b, q...)
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
