package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/kms/pkg/service"

	"hsmkms/kmsclient"
)

// kmsd is what the plugin needs of kmsd: kmsclient.Client satisfies it.
type kmsd interface {
	Call(ctx context.Context, action string, params, out any) error
	Ready(ctx context.Context) error
}

// Annotation keys the plugin adds to every EncryptResponse. The apiserver
// stores them in etcd next to the encrypted DEK (in plaintext) and hands
// them back on Decrypt; keys must be fully qualified domain names.
const (
	// annotationEnvelope carries the kmsd envelope format version of the
	// ciphertext ("1"): the ciphertext is the binary envelope of kmsd's
	// CiphertextBlob, whose first byte is this version.
	annotationEnvelope = "envelope.kms-plugin.hsmkms.io"
)

// maxPlaintext is kmsd's limit on a plaintext (kms.MaxPlaintext). The
// apiserver sends a 32-byte DEK seed (KMS v2, KMSv2KDF) or a 32-byte DEK.
const maxPlaintext = 4096

// healthOK is the Status healthz value the apiserver takes as healthy.
const healthOK = "ok"

// plugin implements the KMS v2 service (k8s.io/kms/pkg/service.Service)
// over kmsd: one CMK, one credential. It is safe for concurrent use.
//
// The key_id it reports is "<CMK id>/v<version>": the CMK version that
// seals new DEKs. Encrypt reads it from the header of the blob kmsd
// returns (the version that really sealed it); Status from DescribeKey's
// CurrentVersion. Rotating the CMK in kmsd therefore changes the key_id,
// which makes the apiserver use a new DEK and lets storage migration find
// objects sealed under older versions.
type plugin struct {
	kmsd        kmsd
	keyID       string
	callTimeout time.Duration // bound of one kmsd call when the caller's deadline is later or absent
	status      statusCache
	log         *slog.Logger
}

var _ service.Service = (*plugin)(nil)

// versionKeyID is the key_id of a CMK version.
func versionKeyID(cmk string, version uint32) string {
	return cmk + "/v" + strconv.FormatUint(uint64(version), 10)
}

// Encrypt seals a DEK (or DEK seed) under the CMK. Errors are gRPC status
// errors (see grpcError); the plaintext is never logged.
func (p *plugin) Encrypt(ctx context.Context, uid string, plaintext []byte) (*service.EncryptResponse, error) {
	start := time.Now()
	if len(plaintext) == 0 || len(plaintext) > maxPlaintext {
		return nil, status.Errorf(codes.InvalidArgument, "the plaintext must be 1 to %d bytes, got %d", maxPlaintext, len(plaintext))
	}
	ctx, cancel := context.WithTimeout(ctx, p.callTimeout)
	defer cancel()
	var out struct {
		CiphertextBlob string `json:"CiphertextBlob"`
	}
	err := p.kmsd.Call(ctx, "Encrypt", map[string]string{"KeyId": p.keyID, "Plaintext": base64.StdEncoding.EncodeToString(plaintext)}, &out)
	if err != nil {
		return nil, p.fail(ctx, "Encrypt", uid, start, err)
	}
	env, err := kmsclient.DecodeBlob(out.CiphertextBlob)
	if err != nil {
		return nil, p.fail(ctx, "Encrypt", uid, start, err)
	}
	h, err := kmsclient.ParseBlobHeader(env)
	if err != nil {
		return nil, p.fail(ctx, "Encrypt", uid, start, err)
	}
	kid := versionKeyID(h.KeyID, h.KeyVersion)
	p.status.sawKeyID(kid)
	p.log.Debug("encrypt", "uid", uid, "key_id", kid, "ms", time.Since(start).Milliseconds())
	return &service.EncryptResponse{
		Ciphertext:  env,
		KeyID:       kid,
		Annotations: map[string][]byte{annotationEnvelope: []byte(strconv.Itoa(int(h.Format)))},
	}, nil
}

// Decrypt opens a ciphertext made by Encrypt, under whichever CMK version
// sealed it (kmsd keeps every version). The blob carries its key and
// version, so req.KeyID and the annotations are not needed; whether the
// credential may decrypt under that key is kmsd's decision.
func (p *plugin) Decrypt(ctx context.Context, uid string, req *service.DecryptRequest) ([]byte, error) {
	start := time.Now()
	if len(req.Ciphertext) == 0 {
		return nil, status.Error(codes.InvalidArgument, "the ciphertext is empty")
	}
	ctx, cancel := context.WithTimeout(ctx, p.callTimeout)
	defer cancel()
	var out struct {
		Plaintext string `json:"Plaintext"`
	}
	err := p.kmsd.Call(ctx, "Decrypt", map[string]string{"CiphertextBlob": base64.StdEncoding.EncodeToString(req.Ciphertext)}, &out)
	if err != nil {
		return nil, p.fail(ctx, "Decrypt", uid, start, err)
	}
	pt, err := base64.StdEncoding.DecodeString(out.Plaintext)
	if err != nil || len(pt) == 0 {
		return nil, p.fail(ctx, "Decrypt", uid, start, fmt.Errorf("%w: the plaintext is not base64", kmsclient.ErrBadReply))
	}
	p.log.Debug("decrypt", "uid", uid, "key_id", req.KeyID, "ms", time.Since(start).Milliseconds())
	return pt, nil
}

// Status reports whether the plugin can serve and the current key_id. A
// result is reused for the status cache's TTL (see statusCache).
func (p *plugin) Status(ctx context.Context) (*service.StatusResponse, error) {
	r, err := p.status.get(ctx, p.probe)
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return &service.StatusResponse{Version: "v2", Healthz: r.healthz, KeyID: r.keyID}, nil
}

// probe asks kmsd, within ctx, whether it is ready (/readyz: its token and
// store answer) and describes the CMK with the plugin's credential. It is
// healthy only if both succeed and the CMK is Enabled.
func (p *plugin) probe(ctx context.Context) probeResult {
	ready := make(chan error, 1)
	go func() { ready <- p.kmsd.Ready(ctx) }()
	var md struct {
		KeyMetadata struct {
			KeyId          string `json:"KeyId"`
			KeyState       string `json:"KeyState"`
			CurrentVersion uint32 `json:"CurrentVersion"`
		} `json:"KeyMetadata"`
	}
	err := p.kmsd.Call(ctx, "DescribeKey", map[string]string{"KeyId": p.keyID}, &md)
	rerr := <-ready
	k := md.KeyMetadata
	switch {
	case err != nil:
		return probeResult{healthz: "kmsd DescribeKey failed: " + describe(err, p.keyID)}
	case rerr != nil:
		return probeResult{healthz: "kmsd not ready: " + describe(rerr, p.keyID)}
	case k.KeyState != "Enabled":
		return probeResult{healthz: fmt.Sprintf("CMK %s is %s, not Enabled", p.keyID, k.KeyState)}
	case k.CurrentVersion == 0 || k.KeyId == "":
		return probeResult{healthz: "kmsd's DescribeKey reported no CurrentVersion (kmsd too old?)"}
	}
	return probeResult{healthz: healthOK, keyID: versionKeyID(k.KeyId, k.CurrentVersion)}
}

// fail logs a failed call (never its data) and returns it as a gRPC error.
func (p *plugin) fail(ctx context.Context, op, uid string, start time.Time, err error) error {
	ge := grpcError(ctx, op, err, p.keyID)
	p.log.Warn(op+" failed", "uid", uid, "code", status.Code(ge).String(), "err", status.Convert(ge).Message(), "ms", time.Since(start).Milliseconds())
	return ge
}

// grpcError turns an error of a kmsd call into a gRPC status error with a
// message an operator can act on.
func grpcError(ctx context.Context, op string, err error, keyID string) error {
	msg := fmt.Sprintf("kms-plugin %s: %s", op, describe(err, keyID))
	var ae *kmsclient.APIError
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, msg)
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, msg)
	case errors.As(err, &ae):
		return status.Error(apiCode(ae.Code), msg)
	case errors.Is(err, kmsclient.ErrNotBlob):
		return status.Error(codes.Internal, msg)
	}
	return status.Error(codes.Unavailable, msg)
}

// describe says what went wrong in words an operator can act on.
func describe(err error, keyID string) string {
	var ae *kmsclient.APIError
	var ne net.Error
	switch {
	case errors.As(err, &ae) && ae.Code == "UnauthorizedOperation":
		return fmt.Sprintf("kmsd refused %s: %v; the plugin's credential must allow kms:Encrypt, kms:Decrypt and kms:DescribeKey on the CMK %s", ae.Action, err, keyID)
	case errors.As(err, &ae):
		return fmt.Sprintf("kmsd refused %s: %v", ae.Action, err)
	case errors.Is(err, context.DeadlineExceeded):
		return "kmsd did not answer in time (deadline exceeded)"
	case errors.As(err, &ne):
		return "kmsd unreachable: " + err.Error()
	}
	return err.Error()
}

// apiCode maps kmsd's API 3.0 error codes to gRPC codes.
func apiCode(code string) codes.Code {
	switch {
	case code == "UnauthorizedOperation" || code == "AuthFailure" || strings.HasPrefix(code, "AuthFailure."):
		return codes.PermissionDenied
	case strings.HasPrefix(code, "ResourceUnavailable."):
		return codes.FailedPrecondition
	case strings.HasPrefix(code, "InvalidParameter") || code == "FailedOperation.DecryptError":
		return codes.InvalidArgument
	case code == "RequestLimitExceeded" || strings.HasPrefix(code, "LimitExceeded"):
		return codes.ResourceExhausted
	case strings.HasPrefix(code, "UnsupportedOperation.ServiceTemporaryUnavailable"):
		return codes.Unavailable
	}
	return codes.Internal
}

// probeResult is the outcome of one status probe.
type probeResult struct {
	healthz string // healthOK or why not
	keyID   string // the current key_id; "" when unknown
}

// statusCache holds the last status probe and the probe in progress, so
// that the apiserver's health checks (every few seconds, per apiserver)
// reach kmsd and its HSM at most once per ttl; callers that arrive while a
// probe runs wait for it. The zero value is not usable: set ttl and
// timeout.
type statusCache struct {
	ttl     time.Duration // how long a result is reused
	timeout time.Duration // bound of one probe

	mu      sync.Mutex
	last    probeResult
	at      time.Time     // when last was made; zero before the first probe
	running chan struct{} // closed when the probe in progress ends; nil if none
	known   string        // the last key_id seen (Status or Encrypt), for unhealthy answers
}

// get returns a result made less than ttl ago, or waits for a probe (its
// own or one in progress). It returns ctx's error if ctx ends first; the
// probe goes on, bounded by timeout, for the other callers.
func (c *statusCache) get(ctx context.Context, probe func(context.Context) probeResult) (probeResult, error) {
	for {
		c.mu.Lock()
		if !c.at.IsZero() && time.Since(c.at) < c.ttl {
			r := c.withKnown(c.last)
			c.mu.Unlock()
			return r, nil
		}
		wait := c.running
		if wait == nil {
			wait = make(chan struct{})
			c.running = wait
			go c.run(probe, wait)
		}
		c.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return probeResult{}, ctx.Err()
		}
	}
}

// run makes one probe and publishes it.
func (c *statusCache) run(probe func(context.Context) probeResult, done chan struct{}) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	r := probe(ctx)
	cancel()
	c.mu.Lock()
	c.last, c.at, c.running = r, time.Now(), nil
	if r.keyID != "" {
		c.known = r.keyID
	}
	c.mu.Unlock()
	close(done)
}

// withKnown fills an unhealthy result's key_id with the last one seen (the
// API wants a non-empty key_id in every answer). c.mu is held.
func (c *statusCache) withKnown(r probeResult) probeResult {
	if r.keyID == "" {
		r.keyID = c.known
		if r.keyID == "" {
			r.keyID = "unknown"
		}
	}
	return r
}

// sawKeyID notes the key_id of a successful Encrypt. If it differs from
// the cached status, the CMK was rotated: the cached result is dropped so
// that the next Status reports the new key_id at once.
func (c *statusCache) sawKeyID(kid string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last.keyID != "" && c.last.keyID != kid {
		c.at = time.Time{}
	}
	c.known = kid
}
