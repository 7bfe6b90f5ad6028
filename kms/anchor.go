package kms

import (
	"context"
	"fmt"

	"hsmkms/store"
)

// KindAuditCheckpoint is the kind of a sealed audit trail checkpoint.
const KindAuditCheckpoint = "audit-checkpoint"

func checkpointMsg(a store.AuditAnchor) []byte {
	return newMACMsg(KindAuditCheckpoint).str(a.Node).u64(a.Seq).str(a.Hash).time(a.Time).b
}

// SealAuditCheckpoint sets a.MAC: an HMAC-SHA-256 computed inside the HSM,
// under the metadata MAC key, over the node, seq, hash and time of an audit
// trail head. kmsd stores it as the trail's anchor and appends it to the
// checkpoint file. Errors: HSM failures (ErrBusy, ErrUnavailable,
// ErrInternal).
func (s *Service) SealAuditCheckpoint(ctx context.Context, a *store.AuditAnchor) error {
	m, err := s.mac(ctx, checkpointMsg(*a))
	if err != nil {
		return err
	}
	a.MAC = m
	return nil
}

// CheckAuditCheckpoint verifies a checkpoint or anchor sealed by
// SealAuditCheckpoint: an error wrapping ErrIntegrity if its MAC is
// missing or wrong, an HSM error if it could not be checked.
func (s *Service) CheckAuditCheckpoint(ctx context.Context, a store.AuditAnchor) error {
	return s.verify(ctx, fmt.Sprintf("audit checkpoint of %s at seq %d", a.Node, a.Seq), checkpointMsg(a), a.MAC)
}
