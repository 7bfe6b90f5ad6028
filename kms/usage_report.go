package kms

// VersionUsage is the encryption count of one key version against its
// limit, for monitoring.
type VersionUsage struct {
	KeyID   string
	Version uint32
	Count   uint64
	Limit   uint64
}

// UsageReport lists the usage of the newest version of every key that is
// not Deleted (older versions no longer encrypt, so their counts stay
// put). It reads the in-memory counters only; it is cheap enough for a
// metrics scrape and safe for concurrent use. It does not authorise: it is
// for the process's own monitoring, never served to API callers.
func (s *Service) UsageReport() []VersionUsage {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]VersionUsage, 0, len(s.keys))
	for _, k := range s.keys {
		if k.meta.KeyState == StateDeleted {
			continue
		}
		v := k.current()
		out = append(out, VersionUsage{KeyID: k.meta.KeyID, Version: v.number, Count: v.usage.count(), Limit: s.usageLimit})
	}
	return out
}
