package store

import (
	"errors"
	"fmt"
	"math"
)

// Checks of records that both stores (SQLite, PostgreSQL) run before
// writing them.

func validateKey(k Key) error {
	if k.ID == "" {
		return errors.New("invalid key: empty id")
	}
	if _, err := toNanos(k.CreatedAt); err != nil {
		return fmt.Errorf("invalid key: created at: %w", err)
	}
	if !k.DeletionDate.IsZero() {
		if _, err := toNanos(k.DeletionDate); err != nil {
			return fmt.Errorf("invalid key: deletion date: %w", err)
		}
	}
	if !k.LastRotatedAt.IsZero() {
		if _, err := toNanos(k.LastRotatedAt); err != nil {
			return fmt.Errorf("invalid key: last rotated at: %w", err)
		}
	}
	if len(k.Versions) == 0 {
		return errors.New("invalid key: no versions")
	}
	seen := make(map[uint32]bool, len(k.Versions))
	for _, v := range k.Versions {
		if v.Number == 0 {
			return errors.New("invalid key: version number 0")
		}
		if seen[v.Number] {
			return fmt.Errorf("invalid key: duplicate version number %d", v.Number)
		}
		seen[v.Number] = true
		if len(v.ObjectID) == 0 {
			return fmt.Errorf("invalid key: version %d: empty object id", v.Number)
		}
		if err := validateVersion(v); err != nil {
			return fmt.Errorf("invalid key: %w", err)
		}
	}
	return nil
}

func validateVersion(v Version) error {
	switch {
	case v.Number == 0:
		return errors.New("version number 0")
	case len(v.ObjectID) == 0:
		return fmt.Errorf("version %d: empty object id", v.Number)
	case v.UsageReserved > math.MaxInt64:
		return fmt.Errorf("version %d: usage reservation above 2^63-1", v.Number)
	}
	if _, err := toNanos(v.CreatedAt); err != nil {
		return fmt.Errorf("version %d: created at: %w", v.Number, err)
	}
	return nil
}

func validatePending(p PendingObject) error {
	switch {
	case len(p.ObjectID) == 0:
		return errors.New("invalid pending object: empty object id")
	case p.KeyID == "":
		return errors.New("invalid pending object: empty key id")
	case p.Version == 0:
		return errors.New("invalid pending object: version 0")
	}
	if _, err := toNanos(p.CreatedAt); err != nil {
		return fmt.Errorf("invalid pending object: created at: %w", err)
	}
	return nil
}
