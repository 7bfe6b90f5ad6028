package kms

import "context"

// DefaultRegion is the region reported when Config.Region is empty.
const DefaultRegion = "ap-guangzhou"

// ServiceStatus is what GetServiceStatus reports: the service is enabled,
// and the keys that count against the limit.
type ServiceStatus struct {
	KeyCount int // keys that are not Deleted
	KeyLimit int // Config.KeyLimit
}

// ServiceStatus reports the service's state, authorised as
// kms:GetServiceStatus on "*". Errors: ErrUnauthorized. Safe for
// concurrent use.
func (s *Service) ServiceStatus(ctx context.Context) (ServiceStatus, error) {
	if err := authorize(ctx, "kms:GetServiceStatus", "*"); err != nil {
		return ServiceStatus{}, err
	}
	s.mu.RLock()
	n := s.live
	s.mu.RUnlock()
	return ServiceStatus{KeyCount: n, KeyLimit: s.keyLimit}, nil
}

// Regions returns the regions served: the one configured region,
// authorised as kms:GetRegions on "*". Errors: ErrUnauthorized.
func (s *Service) Regions(ctx context.Context) ([]string, error) {
	if err := authorize(ctx, "kms:GetRegions", "*"); err != nil {
		return nil, err
	}
	return []string{s.Region()}, nil
}

// Region is the configured region (Config.Region, or DefaultRegion).
func (s *Service) Region() string {
	if s.region == "" {
		return DefaultRegion
	}
	return s.region
}
