package httpapi

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"
)

// TestSendJSONMatchesEchoJSON holds sendJSON to the reply Echo's c.JSON
// writes: same status, Content-Type and bytes (HTML-safe escaping and the
// final newline included), for replies of each protocol.
func TestSendJSONMatchesEchoJSON(t *testing.T) {
	tests := []struct {
		name string
		v    any
	}{
		{"api3 success", api3Envelope{Response: &encryptResponse{CiphertextBlob: []byte("abc\xfb\xff"), KeyID: "k<&>", responseBase: responseBase{RequestID: "r"}}}},
		{"api3 error", api3Envelope{Response: api3ErrorBody{Error: &apiError{Code: "InvalidParameter", Message: "bad \"x\" \u2028 <script>"}, RequestID: "r"}}},
		{"legacy", legacyReply{Code: 4000, Message: "é\x01", RequestID: "r"}},
	}
	e := echo.New()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := httptest.NewRecorder()
			if err := e.NewContext(httptest.NewRequest(http.MethodPost, "/", nil), want).JSON(http.StatusOK, tt.v); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ { // the second time with a reused encoder
				got := httptest.NewRecorder()
				if err := sendJSON(e.NewContext(httptest.NewRequest(http.MethodPost, "/", nil), got), http.StatusOK, tt.v); err != nil {
					t.Fatal(err)
				}
				if got.Code != want.Code || got.Body.String() != want.Body.String() || got.Header().Get("Content-Type") != want.Header().Get("Content-Type") {
					t.Fatalf("sendJSON: %d %q %q, c.JSON: %d %q %q", got.Code, got.Header().Get("Content-Type"), got.Body, want.Code, want.Header().Get("Content-Type"), want.Body)
				}
			}
		})
	}
}

// TestSendJSONClearsItsBuffer checks that a reply (a Decrypt's plaintext)
// does not stay in the pooled buffer once written.
func TestSendJSONClearsItsBuffer(t *testing.T) {
	e := echo.New()
	rec := httptest.NewRecorder()
	r := replyEncoders.Get().(*replyEncoder)
	replyEncoders.Put(r)
	// sync.Pool may drop r at any time; look at whichever encoder served.
	var seen *replyEncoder
	for i := 0; i < 10 && seen == nil; i++ {
		if err := sendJSON(e.NewContext(httptest.NewRequest(http.MethodPost, "/", nil), rec), http.StatusOK, map[string]string{"Plaintext": "c2VjcmV0"}); err != nil {
			t.Fatal(err)
		}
		got := replyEncoders.Get().(*replyEncoder)
		if got.buf.Len() > 0 || got.buf.Cap() > 0 {
			seen = got
		}
		replyEncoders.Put(got)
	}
	if seen == nil {
		t.Fatal("no used reply encoder came back from the pool")
	}
	for _, b := range seen.buf.Bytes()[:seen.buf.Cap()] {
		if b != 0 {
			t.Fatalf("the reply buffer still holds %q", seen.buf.Bytes()[:seen.buf.Cap()])
		}
	}
}
