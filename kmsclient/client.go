// Package kmsclient is the Go client of kmsd's API 3.0 (TC3-HMAC-SHA256
// signed JSON over HTTP or HTTPS, optionally with a client certificate),
// shared by kmsctl and the Kubernetes KMS plugin so that there is one
// signer and one error shape on the client side.
//
// A Client is safe for concurrent use; it keeps its connections to kmsd
// alive between calls.
package kmsclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"hsmkms/tcsign"
)

// APIVersion is the X-TC-Version of kmsd's API 3.0.
const APIVersion = "2019-01-18"

// DefaultTimeout bounds a call when Config.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// maxReply bounds the size of a reply read from kmsd.
const maxReply = 4 << 20

// Config says where kmsd is and who calls it.
type Config struct {
	// Endpoint is kmsd's base URL: http://HOST:PORT or https://HOST:PORT.
	Endpoint string
	// SecretID and SecretKey are the API credential that signs every call.
	SecretID, SecretKey string
	// Timeout bounds each call (connection, request and reply), on top of
	// the caller's context; DefaultTimeout if zero.
	Timeout time.Duration
	// TLS configures HTTPS (server CA, client certificate for mTLS); nil
	// uses the system roots and no client certificate. See LoadTLS.
	TLS *tls.Config
}

// Client calls kmsd's API 3.0.
type Client struct {
	endpoint, host      string
	secretID, secretKey string
	timeout             time.Duration
	http                *http.Client
}

// New checks cfg and returns a Client. It fails if the endpoint is not an
// http or https URL with a host, or the credential is incomplete.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("endpoint %q: want http://HOST:PORT or https://HOST:PORT", cfg.Endpoint)
	}
	if cfg.SecretID == "" || cfg.SecretKey == "" {
		return nil, errors.New("the credential needs a SecretId and a SecretKey")
	}
	if cfg.TLS != nil && u.Scheme != "https" {
		return nil, fmt.Errorf("endpoint %q: TLS settings given for a plain http endpoint", cfg.Endpoint)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLS != nil {
		tr.TLSClientConfig = cfg.TLS.Clone()
	}
	return &Client{
		endpoint: strings.TrimRight(cfg.Endpoint, "/"), host: u.Host,
		secretID: cfg.SecretID, secretKey: cfg.SecretKey, timeout: timeout,
		http: &http.Client{Transport: tr},
	}, nil
}

// Endpoint returns kmsd's base URL, without a trailing slash.
func (c *Client) Endpoint() string { return c.endpoint }

// APIError is an error answer of kmsd: the call reached kmsd, which
// refused it with an API 3.0 error code (e.g. UnauthorizedOperation,
// ResourceUnavailable.CmkDisabled).
type APIError struct {
	Action    string
	Code      string
	Message   string
	RequestID string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s (RequestId %s)", e.Code, e.Message, e.RequestID)
}

// Code returns the API error code carried by err, or "" if err is not (and
// does not wrap) an *APIError.
func Code(err error) string {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Code
	}
	return ""
}

// ErrBadReply wraps replies that are not API 3.0 answers (an HTTP status
// other than 200, a body that is not a Response object): something other
// than kmsd answered, or kmsd failed before its API layer.
var ErrBadReply = errors.New("unexpected reply")

// Call sends one API 3.0 action with params (marshalled to the JSON body)
// and decodes the Response object into out. It returns within the
// client's Timeout or when ctx ends, whichever comes first.
//
// Errors: *APIError when kmsd refused the action; an error wrapping
// ErrBadReply for an answer that is not API 3.0; otherwise the transport's
// error (connection refused, TLS, or ctx's error / a deadline, which
// errors.Is recognises as context.DeadlineExceeded or context.Canceled).
func (c *Client) Call(ctx context.Context, action string, params, out any) error {
	return c.CallService(ctx, "kms", APIVersion, action, params, out)
}

// The Tag service's TC3 scope and version, which kmsd serves for KMS keys
// on the same listener (ModifyResourceTags, DescribeResourceTagsByResourceIds…).
const (
	TagService    = "tag"
	TagAPIVersion = "2018-08-13"
)

// CallService is Call for another service's action on the same endpoint,
// signed for service and sent as version (the Tag service: TagService,
// TagAPIVersion). Errors are Call's.
func (c *Client) CallService(ctx context.Context, service, version, action string, params, out any) error {
	body, err := json.Marshal(params)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint+"/", bytes.NewReader(body))
	if err != nil {
		return err
	}
	ts := time.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-TC-Action", action)
	req.Header.Set("X-TC-Version", version)
	req.Header.Set("X-TC-Timestamp", strconv.FormatInt(ts, 10))
	// The action is signed: a captured request cannot be re-sent as another.
	req.Header.Set("Authorization", tcsign.SignTC3Action(c.secretID, c.secretKey, service, http.MethodPost, c.host, "application/json", "", action, ts, body))
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d: %w", action, resp.StatusCode, ErrBadReply)
	}
	var env struct {
		Response json.RawMessage `json:"Response"`
	}
	var head struct {
		Error *struct {
			Code    string `json:"Code"`
			Message string `json:"Message"`
		} `json:"Error"`
		RequestID string `json:"RequestId"`
	}
	if err := json.Unmarshal(raw, &env); err != nil || env.Response == nil || json.Unmarshal(env.Response, &head) != nil {
		return fmt.Errorf("%s: %w from %s", action, ErrBadReply, c.endpoint)
	}
	if head.Error != nil {
		return &APIError{Action: action, Code: head.Error.Code, Message: head.Error.Message, RequestID: head.RequestID}
	}
	return json.Unmarshal(env.Response, out)
}

// Ready asks kmsd's unauthenticated /readyz whether it can serve (its
// token and its store answer). It returns nil when kmsd says ready, an
// error otherwise; it is bounded like Call.
func (c *Client) Ready(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.endpoint+"/readyz", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("kmsd is not ready (HTTP %d on /readyz)", resp.StatusCode)
	}
	return nil
}

// CloseIdleConnections closes the connections kept alive to kmsd.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

// LoadTLS builds the TLS configuration of an https endpoint from PEM
// files: caFile (the CA that signed kmsd's certificate; "" for the system
// roots) and, for mTLS, certFile and keyFile (the client certificate and
// its key; both or neither). It returns nil, nil when all three are empty.
func LoadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	if caFile == "" && certFile == "" && keyFile == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s: no PEM certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("a client certificate needs both its certificate file and its key file")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
