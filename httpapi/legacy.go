package httpapi

import (
	"context"
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"hsmkms/kms"
)

// LegacyPath is the path of the legacy API.
const LegacyPath = "/v2/index.php"

// Legacy common error codes (Tencent Cloud API 2.0) and the KMS module codes
// of the Encrypt documentation. The README's error table lists when each is
// returned.
const (
	codeOK               = 0
	codeInvalidParameter = 4000
	codeUnauthorized     = 4102
	codeNotFound         = 5000
	codeOperationFailed  = 5100
	codeInternal         = 6000
	codeNoSuchAction     = 6100
	codeUnavailable      = 6200

	codeIllegalContext  = 4540 // module 10640
	codeEncryptFailed   = 4560 // module 10660
	codePlaintextBase64 = 4590 // module 10690
)

// legacyCommonParams are accepted on every action (authentication itself is
// checked elsewhere).
var legacyCommonParams = []string{"Action", "Region", "Timestamp", "Nonce", "SecretId", "Signature", "SignatureMethod", "Token", "RequestClient"}

// legacyError is an error answer of the legacy API.
type legacyError struct {
	code    int
	message string
}

func (e *legacyError) Error() string { return fmt.Sprintf("legacy %d: %s", e.code, e.message) }

func legacyErrorf(code int, format string, args ...any) *legacyError {
	return &legacyError{code: code, message: fmt.Sprintf(format, args...)}
}

// legacyReply is the envelope every legacy answer carries.
type legacyReply struct {
	Code      int    `json:"code"`
	Message   string `json:"message"`
	RequestID string `json:"requestId"`
}

type legacyKeyMetadata struct {
	KeyID       string `json:"keyId"`
	Alias       string `json:"alias"`
	CreateTime  int64  `json:"createTime"`
	Description string `json:"description"`
	KeyState    string `json:"keyState"`
	KeyUsage    string `json:"keyUsage"`
	DeleteTime  int64  `json:"deleteTime"`
}

type legacyCreateKeyReply struct {
	legacyReply
	KeyMetadata legacyKeyMetadata `json:"keyMetadata"`
}

type legacyEncryptReply struct {
	legacyReply
	KeyID          string `json:"keyId"`
	CiphertextBlob []byte `json:"ciphertextBlob"`
}

type legacyDecryptReply struct {
	legacyReply
	KeyID     string `json:"keyId"`
	Plaintext []byte `json:"plaintext"`
}

func (r legacyDecryptReply) wipe() { clear(r.Plaintext) }

// authenticateLegacy is the legacy routes' authentication middleware: it
// reads the parameters and verifies their signature; they and the caller
// go on in the request record.
func (s *Server) authenticateLegacy(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		info := infoFrom(r.Context())
		p, err := s.legacyParams(r)
		if err != nil {
			return err
		}
		if info.principal, err = s.authV1(r.Context(), r, LegacyPath, p); err != nil {
			return err
		}
		info.params = p
		return next(c)
	}
}

// serveLegacy serves GET and POST /v2/index.php once authenticated and
// admitted. Every answer is HTTP 200 with a JSON body whose integer code
// is 0 on success.
func (s *Server) serveLegacy(c echo.Context) error {
	ctx := c.Request().Context()
	info := infoFrom(ctx)
	p := info.params
	ctx = kms.WithPrincipal(ctx, info.principal)
	action := p.get("Action")
	act, ok := s.actions.legacy[action]
	info.action, info.known = action, ok
	if !ok {
		if action == "" {
			return legacyErrorf(codeInvalidParameter, "missing parameter: Action")
		}
		return legacyErrorf(codeNoSuchAction, "action %q is not supported", truncate(action, 64))
	}
	if err := p.only(legacyCommonParams, act.legacyParams); err != nil {
		return err
	}
	reply, err := act.legacy(s, ctx, p, legacyReply{Code: codeOK, Message: "", RequestID: info.requestID})
	if err != nil {
		return err
	}
	info.reply = reply
	return nil
}

// legacyCreateKey serves the legacy CreateKey.
func (s *Server) legacyCreateKey(ctx context.Context, p params, ok legacyReply) (any, error) {
	in := kms.CreateKeyInput{Alias: p.get("alias"), Description: p.get("description"), KeyUsage: p.get("keyUsage")}
	if in.Alias == "" {
		return nil, legacyErrorf(codeInvalidParameter, "missing parameter: alias")
	}
	if t := p.get("type"); t != "" && t != "1" {
		return nil, legacyErrorf(codeInvalidParameter, "unsupported type %q: only 1 (normal CMK) is supported", truncate(t, 16))
	}
	md, err := s.kms.CreateKey(ctx, in)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, md.KeyID, md.CurrentVersion)
	return legacyCreateKeyReply{legacyReply: ok, KeyMetadata: toLegacyMetadata(md)}, nil
}

// legacyEncrypt serves the legacy Encrypt.
func (s *Server) legacyEncrypt(ctx context.Context, p params, ok legacyReply) (any, error) {
	keyID, err := p.required("keyId")
	if err != nil {
		return nil, err
	}
	b64, err := p.required("plaintext")
	if err != nil {
		return nil, err
	}
	pt, err := decodePlaintext(b64)
	if err != nil {
		return nil, &legacyError{code: codePlaintextBase64, message: "(10690)plaintext is not encoded with base64"}
	}
	noteKey(ctx, keyID, 0)
	res, err := s.kms.Encrypt(ctx, kms.EncryptInput{KeyID: keyID, Plaintext: pt, EncryptionContext: p.get("encryptionContext")})
	clear(pt) // no plaintext outlives its request in our memory
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return legacyEncryptReply{legacyReply: ok, KeyID: res.KeyID, CiphertextBlob: res.Ciphertext}, nil
}

// legacyDecrypt serves the legacy Decrypt.
func (s *Server) legacyDecrypt(ctx context.Context, p params, ok legacyReply) (any, error) {
	blob, err := p.required("ciphertextBlob")
	if err != nil {
		return nil, err
	}
	res, err := s.kms.Decrypt(ctx, kms.DecryptInput{CiphertextBlob: blob, EncryptionContext: p.get("encryptionContext")})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return legacyDecryptReply{legacyReply: ok, KeyID: res.KeyID, Plaintext: wireBytes(res.Plaintext)}, nil
}

func toLegacyMetadata(md kms.KeyMetadata) legacyKeyMetadata {
	usage := md.KeyUsage
	if usage == kms.DefaultKeyUsage {
		usage = "ENCRYPT/DECRYPT" // the legacy API's spelling
	}
	var del int64
	if !md.DeletionDate.IsZero() {
		del = md.DeletionDate.Unix()
	}
	return legacyKeyMetadata{
		KeyID: md.KeyID, Alias: md.Alias, CreateTime: md.CreateTime.Unix(), Description: md.Description,
		KeyState: md.KeyState, KeyUsage: usage, DeleteTime: del,
	}
}

// legacyParams reads the parameters: the query string of a GET, the form
// body of a POST whatever its Content-Type (the legacy Python SDK sends
// none). Query parameters of a POST are ignored, as the legacy API does.
func (s *Server) legacyParams(r *http.Request) (params, error) {
	var raw string
	switch r.Method {
	case http.MethodGet:
		raw = r.URL.RawQuery
		if int64(len(raw)) > s.cfg.MaxBodyBytes {
			return nil, legacyErrorf(codeInvalidParameter, "query string too long")
		}
	case http.MethodPost:
		body, err := readBody(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return nil, legacyErrorf(codeInvalidParameter, "cannot read request body")
		}
		if int64(len(body)) > s.cfg.MaxBodyBytes {
			return nil, legacyErrorf(codeInvalidParameter, "request body larger than %d bytes", s.cfg.MaxBodyBytes)
		}
		raw = string(body)
	}
	return parseParams(raw)
}
