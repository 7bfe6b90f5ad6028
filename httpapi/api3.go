package httpapi

import (
	"context"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"hsmkms/kms"
	"hsmkms/tcsign"
)

// API3Version is the only API 3.0 version served.
const API3Version = "2019-01-18"

// api3CommonParams are the common parameters of the signature-v1 shape of
// API 3.0 (query string or form body); business parameters are the rest.
var api3CommonParams = map[string]bool{
	"Action": true, "Version": true, "Region": true, "Timestamp": true, "Nonce": true,
	"SecretId": true, "Signature": true, "SignatureMethod": true, "Token": true,
	"Language": true, "RequestClient": true,
}

// apiError is an API 3.0 error answer.
type apiError struct {
	Code    string `json:"Code"`
	Message string `json:"Message"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func apiErrorf(code, msg string) *apiError { return &apiError{Code: code, Message: msg} }

type api3ErrorBody struct {
	Error     *apiError `json:"Error"`
	RequestID string    `json:"RequestId"`
}

type api3Envelope struct {
	Response any `json:"Response"`
}

// api3Handler serves one API 3.0 action: how to make its request struct,
// and how to serve it.
type api3Handler struct {
	newRequest func() any
	serve      func(s *Server, ctx context.Context, req any, rid string) (any, error)
}

// typedAPI3Action adapts a typed handler to the action table. The handler's
// response struct must have a RequestId field set through setRID.
func typedAPI3Action[Req any, Resp any](fn func(s *Server, ctx context.Context, req *Req) (*Resp, error)) api3Handler {
	return api3Handler{
		newRequest: func() any { return new(Req) },
		serve: func(s *Server, ctx context.Context, req any, rid string) (any, error) {
			resp, err := fn(s, ctx, req.(*Req))
			if err != nil {
				return nil, err
			}
			return resp, nil
		},
	}
}

// api3Request is an API 3.0 request once its shape is decoded.
type api3Request struct {
	action, version string
	tc3             bool
	service         string            // TC3: the credential scope's service ("kms", "tag"...)
	body            []byte            // the raw body (TC3 signs its hash)
	jsonBody        []byte            // TC3 POST: the business parameters
	form            map[string]string // business parameters of the other shapes
	all             map[string]string // signature v1: every parameter, for the signature
}

// readAPI3 reads r in its TC3 or signature-v1 shape into req (the
// request record's own, so that the hot path allocates none).
func (s *Server) readAPI3(r *http.Request, req *api3Request) error {
	body, err := readBody(r, s.cfg.MaxBodyBytes)
	if err != nil {
		return apiErrorf("InvalidParameter", "cannot read the request body")
	}
	if int64(len(body)) > s.cfg.MaxBodyBytes {
		return apiErrorf("InvalidParameter", "the request body is too large")
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		return apiErrorf("UnsupportedProtocol", "only GET and POST are supported")
	}
	if action := hget(r.Header, "X-Tc-Action"); action != "" || strings.HasPrefix(hget(r.Header, "Authorization"), tcsign.Algorithm) {
		*req = api3Request{action: action, version: hget(r.Header, "X-Tc-Version"), tc3: true, body: body}
		if r.Method == http.MethodPost {
			ct := strings.ToLower(hget(r.Header, "Content-Type"))
			if !strings.HasPrefix(ct, "application/json") {
				return apiErrorf("InvalidParameter", "TC3 POST requests must be application/json")
			}
			req.jsonBody = body
			return nil
		}
		p, err := parseParams(r.URL.RawQuery)
		if err != nil {
			return apiErrorf("InvalidParameter", "malformed query string")
		}
		req.form = p
		return nil
	}
	raw := r.URL.RawQuery
	if r.Method == http.MethodPost {
		raw = string(body)
	}
	p, err := parseParams(raw)
	if err != nil {
		return apiErrorf("InvalidParameter", "malformed parameters")
	}
	*req = api3Request{action: p["Action"], version: p["Version"], form: map[string]string{}, all: p}
	for k, v := range p {
		if !api3CommonParams[k] {
			req.form[k] = v
		}
	}
	return nil
}

// authenticateAPI3 is the API 3.0 routes' authentication middleware: it
// reads the request in its TC3 or signature-v1 shape and verifies its
// signature; the request and its caller go on in the request record.
func (s *Server) authenticateAPI3(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		info := infoFrom(r.Context())
		req := &info.api3Req
		err := s.readAPI3(r, req)
		if err != nil {
			return err
		}
		if req.tc3 {
			info.principal, err = s.authTC3(r.Context(), r, req.body, req.action)
			if err == nil {
				req.service = scopeService(hget(r.Header, "Authorization"))
			}
		} else {
			info.principal, err = s.authV1(r.Context(), r, "/", req.all)
		}
		if err != nil {
			return err
		}
		info.api3 = req
		return next(c)
	}
}

// serveAPI3 serves POST / and GET / once authenticated and admitted: API
// 3.0 in its TC3 shape (X-TC-* headers, JSON body or, for GET, business
// parameters in the query) and its signature-v1 shape (everything in the
// query or the form body).
func (s *Server) serveAPI3(c echo.Context) error {
	ctx := c.Request().Context()
	info := infoFrom(ctx)
	req := info.api3
	ctx = kms.WithPrincipal(ctx, info.principal)
	if req.action == "" {
		return apiErrorf("MissingParameter", "the Action parameter is missing")
	}
	if req.version == "" {
		return apiErrorf("MissingParameter", "the Version parameter is missing")
	}
	if req.service == TagService || !req.tc3 && req.version == TagAPIVersion {
		return s.serveTag(ctx, info, req) // signature v1 signs Action and Version: no confusion
	}
	if req.version != API3Version {
		return apiErrorf("NoSuchVersion", "the version "+truncate(req.version, 32)+" is not supported; use "+API3Version)
	}
	info.action = req.action
	act, ok := s.actions.api3[req.action]
	info.known = ok
	if !ok {
		return apiErrorf("InvalidAction", "the action "+truncate(req.action, 64)+" is not supported")
	}
	return s.serveAPI3Action(ctx, info, req, act)
}

// serveAPI3Action serves an API 3.0 or Tag service request for act, the
// action it names (known, version checked): it checks the body size,
// decodes the parameters (JSON body or form/query), calls the action and
// puts its response, with the request id, in info's envelope. Errors are
// the wire errors the edge answers with.
func (s *Server) serveAPI3Action(ctx context.Context, info *reqInfo, req *api3Request, act *action) error {
	if int64(len(req.body)) > act.bodyLimit(s.cfg.MaxBodyBytes) {
		return apiErrorf("InvalidParameter", "the request body is too large")
	}
	in := act.api3.newRequest()
	var err error
	if req.jsonBody != nil {
		err = decodeJSONParams(req.jsonBody, in)
	} else {
		err = decodeFormParams(req.form, in)
	}
	if err != nil {
		return err
	}
	resp, err := act.api3.serve(s, ctx, in, info.requestID)
	if err != nil {
		return err
	}
	setRequestID(resp, info.requestID)
	info.envelope.Response = resp
	info.reply = &info.envelope // the record's own envelope: no copy into an interface
	return nil
}

// responseBase ends every successful API 3.0 response.
type responseBase struct {
	RequestID string `json:"RequestId"`
}

func (b *responseBase) setRequestID(rid string) { b.RequestID = rid }

func setRequestID(resp any, rid string) {
	if r, ok := resp.(interface{ setRequestID(string) }); ok {
		r.setRequestID(rid)
	}
}

// CreateKey

type createKeyRequest struct {
	Alias        *string       `json:"Alias"`
	Description  *string       `json:"Description"`
	KeyUsage     *string       `json:"KeyUsage"`
	Type         *uint64       `json:"Type"`
	Tags         []resourceTag `json:"Tags"`
	HsmClusterId *string       `json:"HsmClusterId"`
}

type resourceTag struct {
	TagKey   *string `json:"TagKey"`
	TagValue *string `json:"TagValue"`
}

type createKeyResponse struct {
	KeyID        string `json:"KeyId"`
	Alias        string `json:"Alias"`
	CreateTime   uint64 `json:"CreateTime"`
	Description  string `json:"Description"`
	KeyState     string `json:"KeyState"`
	KeyUsage     string `json:"KeyUsage"`
	TagCode      uint64 `json:"TagCode"`
	TagMsg       string `json:"TagMsg"`
	HsmClusterId string `json:"HsmClusterId"`
	responseBase
}

func (s *Server) createKey(ctx context.Context, req *createKeyRequest) (*createKeyResponse, error) {
	if _, err := requireString("Alias", req.Alias); err != nil {
		return nil, err
	}
	var keyType int
	if req.Type != nil {
		switch *req.Type {
		case kms.KeyTypeKMS, kms.KeyTypeExternal:
			keyType = int(*req.Type)
		default:
			return nil, apiErrorf("InvalidParameterValue.InvalidType", "the Type must be 1 (created by KMS) or 2 (EXTERNAL: imported key material)")
		}
	}
	if req.HsmClusterId != nil && *req.HsmClusterId != "" {
		return nil, apiErrorf("InvalidParameterValue.InvalidHsmClusterId", "HSM clusters are not supported")
	}
	tags, err := toDomainTags(req.Tags)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.CreateKey(ctx, kms.CreateKeyInput{Alias: *req.Alias, Description: deref(req.Description), KeyUsage: deref(req.KeyUsage), Type: keyType, Tags: tags})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, md.KeyID, md.CurrentVersion)
	return &createKeyResponse{
		KeyID: md.KeyID, Alias: md.Alias, CreateTime: uint64(md.CreateTime.Unix()), Description: md.Description,
		KeyState: md.KeyState, KeyUsage: md.KeyUsage,
	}, nil
}

// Encrypt

type encryptRequest struct {
	KeyId             *string `json:"KeyId"`
	Plaintext         *string `json:"Plaintext"`
	EncryptionContext *string `json:"EncryptionContext"`
}

type encryptResponse struct {
	CiphertextBlob []byte `json:"CiphertextBlob"`
	KeyID          string `json:"KeyId"`
	responseBase
}

func (s *Server) encrypt(ctx context.Context, req *encryptRequest) (*encryptResponse, error) {
	if _, err := requireString("KeyId", req.KeyId); err != nil {
		return nil, err
	}
	if _, err := requireString("Plaintext", req.Plaintext); err != nil {
		return nil, err
	}
	pt, err := decodePlaintext(*req.Plaintext)
	if err != nil {
		return nil, apiErrorf("InvalidParameterValue.InvalidPlaintext", "the Plaintext is not standard base64")
	}
	noteKey(ctx, *req.KeyId, 0)
	res, err := s.kms.Encrypt(ctx, kms.EncryptInput{KeyID: *req.KeyId, Plaintext: pt, EncryptionContext: deref(req.EncryptionContext)})
	clear(pt) // no plaintext outlives its request in our memory
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &encryptResponse{CiphertextBlob: res.Ciphertext, KeyID: res.KeyID}, nil
}

// Decrypt

type decryptRequest struct {
	CiphertextBlob      *string `json:"CiphertextBlob"`
	EncryptionContext   *string `json:"EncryptionContext"`
	EncryptionPublicKey *string `json:"EncryptionPublicKey"`
	EncryptionAlgorithm *string `json:"EncryptionAlgorithm"`
}

type decryptResponse struct {
	KeyID     string `json:"KeyId"`
	Plaintext []byte `json:"Plaintext"`
	responseBase
}

func (r *decryptResponse) wipe() { clear(r.Plaintext) }

func (s *Server) decrypt(ctx context.Context, req *decryptRequest) (*decryptResponse, error) {
	if _, err := requireString("CiphertextBlob", req.CiphertextBlob); err != nil {
		return nil, err
	}
	if deref(req.EncryptionPublicKey) != "" || deref(req.EncryptionAlgorithm) != "" {
		return nil, apiErrorf("UnsupportedOperation", "EncryptionPublicKey is not supported")
	}
	res, err := s.kms.Decrypt(ctx, kms.DecryptInput{CiphertextBlob: *req.CiphertextBlob, EncryptionContext: deref(req.EncryptionContext)})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &decryptResponse{KeyID: res.KeyID, Plaintext: wireBytes(res.Plaintext)}, nil
}
