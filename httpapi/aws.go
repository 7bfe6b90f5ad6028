package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"hsmkms/kms"
)

// This file is the AWS KMS API (awsJson1.1), the edge's third protocol, on
// the same listener as API 3.0: POST / with X-Amz-Target:
// TrentService.<Action> (aws routes such a request here), Content-Type
// application/x-amz-json-1.1, a JSON body, AWS Signature Version 4
// (awssign.go). Replies are JSON with HTTP 200; errors carry the HTTP
// status and the {"__type","message"} body AWS answers with, and every
// reply names its request in x-amzn-RequestId. The actions are in
// awskeys.go, each a row of the action table (awsName).
//
// Keys are named as AWS names them: a key id, a key ARN
// arn:aws:kms:<region>:<account>:key/<id>, an alias alias/<name> or an
// alias ARN arn:aws:kms:<region>:<account>:alias/<name>. <region> is any of
// Config.AWS.Regions, <account> Config.AWS.AccountID; the alias
// alias/<name> is the key whose (one, Tencent) alias is <name> (see
// kms/aliases.go).

// AWSConfig configures the AWS KMS API.
type AWSConfig struct {
	// Regions lists the regions a SigV4 credential scope may name. Empty
	// disables the AWS API (its requests are refused).
	Regions []string
	// AccountID is the account of the ARNs (12 digits); "" means
	// DefaultAWSAccountID.
	AccountID string
}

// DefaultAWSAccountID is the account of the ARNs when none is configured.
const DefaultAWSAccountID = "000000000000"

// awsTargetPrefix starts every X-Amz-Target of the AWS KMS API.
const awsTargetPrefix = "TrentService."

// awsContentType is the content type of the AWS KMS API's bodies.
const awsContentType = "application/x-amz-json-1.1"

// protocolAWS names the AWS KMS API in the audit trail and the metrics.
const protocolAWS = "aws"

// awsError is an AWS error answer: its __type and message. auth marks a
// failed authentication (counted as such, audited as a refusal).
type awsError struct {
	typ, message string
	auth         bool
}

func (e *awsError) Error() string { return e.typ + ": " + e.message }

func awsErrorf(typ, msg string) *awsError { return &awsError{typ: typ, message: msg} }

// awsStatus is the HTTP status AWS KMS answers an error type with: 400 for
// the caller's errors (AWS KMS answers NotFoundException, DisabledException
// and KMSInvalidStateException with 400, not the 404 and 409 of its model's
// query-protocol codes), 403 for a missing signature, 500 and 503 for its
// own failures.
func awsStatus(typ string) int {
	switch typ {
	case "KMSInternalException", "KeyUnavailableException":
		return http.StatusInternalServerError
	case "DependencyTimeoutException":
		return http.StatusServiceUnavailable
	case "MissingAuthenticationTokenException":
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

// awsRequest is an AWS request once read.
type awsRequest struct {
	action string // from X-Amz-Target, without TrentService.
	body   []byte
	region string // of the credential scope
}

// awsErrorBody is the body of an error answer.
type awsErrorBody struct {
	Type    string `json:"__type"`
	Message string `json:"message"`
}

// awsRequestIDHeader names the request id of every AWS answer.
const awsRequestIDHeader = "X-Amzn-Requestid"

// routeAWS sends POST / requests carrying X-Amz-Target to aws, the others
// to api3.
func routeAWS(aws, api3 echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if _, ok := c.Request().Header["X-Amz-Target"]; ok {
			return aws(c)
		}
		return api3(c)
	}
}

// authenticateAWS is the AWS route's authentication middleware: it reads
// the request, checks its shape and verifies its SigV4 signature; the
// request and its caller go on in the request record.
func (s *Server) authenticateAWS(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		info := infoFrom(r.Context())
		c.Response().Header().Set(awsRequestIDHeader, info.requestID)
		body, err := readBody(r, s.cfg.MaxBodyBytes)
		if err != nil {
			return awsErrorf("SerializationException", "cannot read the request body")
		}
		if int64(len(body)) > s.cfg.MaxBodyBytes {
			return awsErrorf("ValidationException", "the request body is too large")
		}
		req := &info.awsReq
		*req = awsRequest{body: body}
		target := hget(r.Header, "X-Amz-Target")
		action, ok := strings.CutPrefix(target, awsTargetPrefix)
		if !ok || action == "" {
			return awsErrorf("UnknownOperationException", "X-Amz-Target must be TrentService.<Action>")
		}
		req.action = action
		info.action = action
		if ct := strings.ToLower(hget(r.Header, "Content-Type")); ct != awsContentType && !strings.HasPrefix(ct, awsContentType+";") {
			return awsErrorf("SerializationException", "Content-Type must be "+awsContentType)
		}
		info.principal, req.region, err = s.authSigV4(r.Context(), r, body)
		if err != nil {
			return err
		}
		info.aws = req
		return next(c)
	}
}

// awsRefused are AWS KMS actions hsmkms knows and does not serve, with the
// reason given.
var awsRefused = map[string]string{
	"CreateGrant":         "grants are not supported: authorisation is by credential policies (kmsctl credentials)",
	"ListGrants":          "grants are not supported: authorisation is by credential policies (kmsctl credentials)",
	"RetireGrant":         "grants are not supported: authorisation is by credential policies (kmsctl credentials)",
	"RevokeGrant":         "grants are not supported: authorisation is by credential policies (kmsctl credentials)",
	"ListRetirableGrants": "grants are not supported: authorisation is by credential policies (kmsctl credentials)",
	"PutKeyPolicy":        "key policies are not supported: authorisation is by credential policies (kmsctl credentials)",
	"GetKeyPolicy":        "key policies are not supported: authorisation is by credential policies (kmsctl credentials)",
	"ListKeyPolicies":     "key policies are not supported: authorisation is by credential policies (kmsctl credentials)",
}

// serveAWS serves an AWS KMS API request once authenticated and admitted.
func (s *Server) serveAWS(c echo.Context) error {
	ctx := c.Request().Context()
	info := infoFrom(ctx)
	req := info.aws
	ctx = kms.WithPrincipal(ctx, info.principal)
	act, ok := s.actions.aws[req.action]
	info.known = ok
	if !ok {
		if why, known := awsRefused[req.action]; known {
			info.known = true
			return awsErrorf("UnsupportedOperationException", req.action+": "+why)
		}
		return awsErrorf("UnknownOperationException", "the operation "+truncate(req.action, 64)+" is not supported")
	}
	if int64(len(req.body)) > act.bodyLimit(s.cfg.MaxBodyBytes) {
		return awsErrorf("ValidationException", "the request body is too large")
	}
	in := act.aws.newRequest()
	if err := decodeJSONParams(req.body, in); err != nil {
		return err
	}
	resp, err := act.aws.serve(s, ctx, in, info.requestID)
	if err != nil {
		return err
	}
	info.reply = resp
	return nil
}

// sendAWSError answers an AWS request with w.
func sendAWSError(c echo.Context, w *wireError) {
	_ = sendJSONAs(c, awsStatus(w.awsType), awsContentType, awsErrorBody{Type: w.awsType, Message: w.awsMessage})
}

// awsWireError maps the edge's own errors of the AWS API; ok is false for
// domain errors (errorTable's AWS column).
func awsWireError(err error) (typ, msg string, ok bool) {
	var ae *awsError
	if errors.As(err, &ae) {
		return ae.typ, ae.message, true
	}
	if pe, isPE := isParamError(err); isPE {
		if pe.code == "UnknownParameter" {
			return "ValidationException", pe.message, true
		}
		return "SerializationException", pe.message, true
	}
	var te *kms.TagError // awstags.go
	if errors.As(err, &te) {
		if errors.Is(err, kms.ErrTagLimit) || strings.HasPrefix(te.Code, "LimitExceeded") {
			return "LimitExceededException", te.Msg, true
		}
		return "TagException", te.Msg, true
	}
	var au *authError // shared refusals: rate, concurrency
	if errors.As(err, &au) {
		if au.api3 == "RequestLimitExceeded" {
			return "ThrottlingException", au.message, true
		}
		return "InvalidSignatureException", au.message, true
	}
	return "", "", false
}

// awsContext is an EncryptionContext as the AWS API sends it, a JSON
// object of strings, kept as sent: the domain parses it exactly as it
// parses the Tencent protocols' JSON string, so both canonicalise alike.
type awsContext []byte

func (a *awsContext) UnmarshalJSON(b []byte) error {
	if bytes.Equal(b, []byte("null")) {
		return nil
	}
	*a = append((*a)[:0], b...)
	return nil
}

// String returns the context as the domain takes it ("" for none).
func (a awsContext) String() string { return string(a) }

// awsUnsupported is a field accepted for wire compatibility and refused
// when given (anything but null).
type awsUnsupported json.RawMessage

func (a *awsUnsupported) UnmarshalJSON(b []byte) error {
	*a = append((*a)[:0], b...)
	return nil
}

// keyARN returns the ARN of key id in region.
func (s *Server) keyARN(region, id string) string {
	return "arn:aws:kms:" + region + ":" + s.awsAccount + ":key/" + id
}

// aliasARN returns the ARN of the alias alias/<name> in region.
func (s *Server) aliasARN(region, name string) string {
	return "arn:aws:kms:" + region + ":" + s.awsAccount + ":alias/" + name
}

// resolveKey returns the key id named by ref (a key id, key ARN, alias
// name or alias ARN), and records it for the audit trail. A name that
// names no key here answers NotFoundException.
func (s *Server) resolveKey(ctx context.Context, field string, ref *string) (string, error) {
	if ref == nil || *ref == "" {
		return "", awsErrorf("ValidationException", "1 validation error detected: Value null at '"+field+"' failed to satisfy constraint: Member must not be null")
	}
	v := *ref
	if rest, ok := strings.CutPrefix(v, "arn:"); ok {
		res, err := s.arnResource(rest)
		if err != nil {
			return "", err
		}
		v = res
	}
	if name, ok := strings.CutPrefix(v, "alias/"); ok {
		id, err := s.aliasKey(name)
		if err != nil {
			return "", awsErrorf("NotFoundException", "Alias "+truncate(*ref, 300)+" is not found.")
		}
		noteKey(ctx, id, 0)
		return id, nil
	}
	if id, ok := strings.CutPrefix(v, "key/"); ok && v != *ref {
		v = id
	}
	noteKey(ctx, v, 0)
	return v, nil
}

// aliasKey returns the key whose alias is name.
func (s *Server) aliasKey(name string) (string, error) {
	a, err := s.awsAdmin()
	if err != nil {
		return "", err
	}
	return a.KeyIDForAlias(name)
}

// arnResource checks an ARN (without "arn:") of this server's partition,
// service, regions and account, and returns its resource ("key/<id>" or
// "alias/<name>").
func (s *Server) arnResource(rest string) (string, error) {
	parts := strings.SplitN(rest, ":", 5)
	if len(parts) != 5 || parts[0] != "aws" || parts[1] != "kms" {
		return "", awsErrorf("NotFoundException", "Invalid arn")
	}
	if !s.awsRegions[parts[2]] || parts[3] != s.awsAccount {
		return "", awsErrorf("NotFoundException", "Invalid arn: the region or account is not this server's")
	}
	res := parts[4]
	if !strings.HasPrefix(res, "key/") && !strings.HasPrefix(res, "alias/") {
		return "", awsErrorf("NotFoundException", "Invalid arn")
	}
	return res, nil
}

// aliasName returns the Tencent alias of an AWS alias name alias/<name>.
func aliasName(field string, v *string) (string, error) {
	if v == nil || *v == "" {
		return "", awsErrorf("ValidationException", "1 validation error detected: Value null at '"+field+"' failed to satisfy constraint: Member must not be null")
	}
	name, ok := strings.CutPrefix(*v, "alias/")
	if !ok || name == "" {
		return "", awsErrorf("InvalidAliasNameException", "the alias name must begin with alias/")
	}
	if strings.HasPrefix(name, "aws/") {
		return "", awsErrorf("NotFoundException", "Alias "+truncate(*v, 300)+" is not found (alias/aws/ names AWS managed keys, which do not exist here).")
	}
	return name, nil
}
