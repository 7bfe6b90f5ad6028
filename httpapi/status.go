package httpapi

import "context"

// GetServiceStatus, GetRegions (KMS actions, version 2019-01-18).

type serviceStatusResponse struct {
	ServiceEnabled         bool   `json:"ServiceEnabled"`
	InvalidType            int64  `json:"InvalidType"`
	UserLevel              uint64 `json:"UserLevel"`
	ProExpireTime          uint64 `json:"ProExpireTime"`
	ProRenewFlag           uint64 `json:"ProRenewFlag"`
	ProResourceId          string `json:"ProResourceId"`
	ExclusiveVSMEnabled    bool   `json:"ExclusiveVSMEnabled"`
	ExclusiveHSMEnabled    bool   `json:"ExclusiveHSMEnabled"`
	SubscriptionInfo       string `json:"SubscriptionInfo"`
	CmkUserCount           uint64 `json:"CmkUserCount"`
	CmkLimit               uint64 `json:"CmkLimit"`
	ExclusiveHSMList       []any  `json:"ExclusiveHSMList"`
	IsAllowedDataKeyHosted bool   `json:"IsAllowedDataKeyHosted"`
	IsAllowedSync          bool   `json:"IsAllowedSync"`
	SyncTaskList           []any  `json:"SyncTaskList"`
	responseBase
}

type noParamsRequest struct{}

// getServiceStatus reports the service as the SDK's fields allow, for an
// on-prem service: enabled (InvalidType 1, "normal"), the standard edition
// (UserLevel 0), no exclusive cluster, no hosted data keys, no
// cross-region sync; CmkUserCount and CmkLimit are the keys not Deleted
// and the configured key limit. The QPS fields are left out: the limits
// are per credential (see Config.RatePerCredential), not per region.
func (s *Server) getServiceStatus(ctx context.Context, _ *noParamsRequest) (*serviceStatusResponse, error) {
	st, err := s.kms.ServiceStatus(ctx)
	if err != nil {
		return nil, err
	}
	return &serviceStatusResponse{ServiceEnabled: true, InvalidType: 1, CmkUserCount: uint64(st.KeyCount), CmkLimit: uint64(st.KeyLimit),
		ExclusiveHSMList: []any{}, SyncTaskList: []any{}}, nil
}

type regionsResponse struct {
	Regions []string `json:"Regions"`
	responseBase
}

func (s *Server) getRegions(ctx context.Context, _ *noParamsRequest) (*regionsResponse, error) {
	r, err := s.kms.Regions(ctx)
	if err != nil {
		return nil, err
	}
	return &regionsResponse{Regions: r}, nil
}
