package kms

import (
	"context"

	"hsmkms/store"
)

// SealIntentForTest returns p with the MAC the service would have written,
// for tests that simulate a crash by writing an intent themselves.
func SealIntentForTest(ctx context.Context, h HSM, p store.PendingObject) (store.PendingObject, error) {
	m, err := h.MAC(ctx, macKeyObjectID, intentMsg(p))
	p.MAC = m
	return p, err
}
