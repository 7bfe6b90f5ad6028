package httpapi

import (
	"context"
	"fmt"
	"hash/maphash"
	"net"
	"strings"
	"time"

	"hsmkms/kms"
)

// This file binds a TC3 signature to its action when the action is not
// signed, and pins the Host and the TC3 service a request may name.

// bindTC3 remembers that the TC3 signature sig (which does not sign its
// action), sent at ts, was accepted with action, and refuses it if it was
// accepted with another action before, here or (on a cluster) on another
// node, unless the new action is a read of metadata (action.metadataRead:
// a signature first seen with a write may then be presented with such a
// read, not the other way round). Re-sending the same signed request with
// the same action is allowed: the official SDKs sign only the timestamp (seconds), the host,
// the content type and the body, so two identical calls within one second
// carry one signature, and the Go SDK's retries re-send the request as
// signed.
func (s *Server) bindTC3(ctx context.Context, sig, action string, ts int64) error {
	act, known := s.actions.api3[action]
	if !known {
		act, known = s.actions.tag[action]
	}
	if !known {
		return nil // refused as InvalidAction once authenticated; nothing runs
	}
	expiry := time.Unix(ts, 0).Add(SignatureWindow)
	tag := maphash.String(s.actionSeed, action)
	res := s.sigs.use(sig, tag, expiry, s.now())
	switch res {
	case nonceConflict:
		if act.metadataRead {
			// Bound to another action, presented with a read of metadata:
			// served, and the binding stays as it was (actions.go).
			return nil
		}
		return errAuthReused
	case nonceFull:
		return errAuthNoncesFull
	}
	if s.sigSync == nil {
		return nil
	}
	use := SignatureUse{Signature: sig, Action: action, Expiry: expiry}
	if act.syncFree {
		if res == nonceFresh && !s.sigSync.add(use) {
			return errAuthNoncesFull
		}
		return nil
	}
	// A state-changing action claims its signature every time, even one
	// this node has seen with the same action: that earlier claim may have
	// failed (the store unreachable).
	// A signature another node accepted before this request arrived is
	// in the ledger within one publication interval (plus the time its
	// batch takes to commit): wait two, then claim it.
	t := time.NewTimer(2 * s.sigSync.interval)
	select {
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	case <-t.C:
	}
	got, err := s.sigSync.ledger.ClaimSignature(ctx, use)
	if err != nil {
		return fmt.Errorf("%w: signature ledger: %w", kms.ErrUnavailable, err)
	}
	if got != action {
		// This node now knows the action the cluster holds.
		s.sigs.retag(sig, maphash.String(s.actionSeed, got), expiry, s.now())
		s.log.Error("a TC3 signature was presented with two actions: the second is refused", "signature", sig[:8], "first", truncate(got, 64), "refused", action)
		return errAuthReused
	}
	return nil
}

// metadataRead reports whether action names an API 3.0 or Tag service
// action that reads metadata only (action.metadataRead).
func (s *Server) metadataRead(action string) bool {
	a, ok := s.actions.api3[action]
	if !ok {
		a, ok = s.actions.tag[action]
	}
	return ok && a.metadataRead
}

// hostAllowed reports whether host (a Host header) names this server:
// always when Config.AllowedHosts is empty, else when its host name
// (without port, any case) is in the list.
func (s *Server) hostAllowed(host string) bool {
	if s.hosts == nil {
		return true
	}
	h := host
	if hn, _, err := net.SplitHostPort(host); err == nil {
		h = hn
	}
	return s.hosts[strings.ToLower(strings.TrimSuffix(h, "."))]
}

// serviceAllowed reports whether a TC3 credential scope may name service,
// for a request with Host host. With Config.TC3Services set, the service
// must be in it. By default it must be "kms", "tag" (the Tag service,
// tagsvc.go), or what the official Node.js
// SDK derives from an endpoint that is an IP address or a name without a
// dot: the endpoint up to its first dot ("127" for 127.0.0.1:8080,
// "localhost:8080" for localhost:8080).
func (s *Server) serviceAllowed(service, host string) bool {
	if s.services != nil {
		return s.services[service]
	}
	if service == "kms" || service == TagService {
		return true
	}
	hn := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		hn = h
	}
	if net.ParseIP(hn) == nil && strings.Contains(hn, ".") {
		return false
	}
	derived, _, _ := strings.Cut(host, ".")
	return service == derived
}

// set returns the lower-cased members of list (nil for an empty list).
func set(list []string, lower bool) map[string]bool {
	if len(list) == 0 {
		return nil
	}
	m := make(map[string]bool, len(list))
	for _, v := range list {
		if lower {
			v = strings.ToLower(strings.TrimSuffix(v, "."))
		}
		m[v] = true
	}
	return m
}
