package httpapi

import (
	"context"

	"github.com/google/uuid"

	"hsmkms/kms"
)

// Key lifecycle, rotation and data-key actions of API 3.0. Each one is a
// thin adapter: field presence and wire ranges are checked here, the rules
// and the authorisation (kms:<Action>) live in the domain.

// KeyAdmin is the part of the domain that manages keys. *kms.Service
// implements it.
type KeyAdmin interface {
	DescribeKey(ctx context.Context, keyID string) (kms.KeyMetadata, error)
	DescribeKeys(ctx context.Context, keyIDs []string) ([]kms.KeyMetadata, error)
	ListKeys(ctx context.Context, in kms.ListKeysInput) (kms.ListKeysResult, error)
	ListKeyDetail(ctx context.Context, in kms.ListKeysInput) (kms.ListKeysResult, error)
	KeyVersions(ctx context.Context, keyID string) ([]kms.VersionInfo, error)
	UsageLimit() uint64
	EnableKey(ctx context.Context, keyID string) error
	DisableKey(ctx context.Context, keyID string) error
	EnableKeys(ctx context.Context, keyIDs []string) error
	DisableKeys(ctx context.Context, keyIDs []string) error
	ScheduleKeyDeletion(ctx context.Context, keyID string, pendingWindowInDays int) (kms.KeyMetadata, error)
	CancelKeyDeletion(ctx context.Context, keyID string) (kms.KeyMetadata, error)
	ArchiveKey(ctx context.Context, keyID string) error
	CancelKeyArchive(ctx context.Context, keyID string) error
	UpdateAlias(ctx context.Context, keyID, alias string) error
	UpdateKeyDescription(ctx context.Context, keyID, description string) error
	RotateKey(ctx context.Context, keyID string) (kms.KeyMetadata, error)
	EnableKeyRotation(ctx context.Context, keyID string, rotateDays int) error
	DisableKeyRotation(ctx context.Context, keyID string) error
	GetKeyRotationStatus(ctx context.Context, keyID string) (kms.KeyMetadata, error)
	GenerateDataKey(ctx context.Context, in kms.GenerateDataKeyInput) (kms.GenerateDataKeyResult, error)
	GenerateRandom(ctx context.Context, n int) ([]byte, error)
	ReEncrypt(ctx context.Context, in kms.ReEncryptInput) (kms.ReEncryptResult, error)
}

// memberAccount is accepted for wire compatibility; cross-account access
// does not exist on-prem, so a non-empty one is refused.
type memberAccount struct {
	MemberAppId *uint64 `json:"MemberAppId"`
	MemberUin   *uint64 `json:"MemberUin"`
}

type resourceTagFilter struct {
	TagKey   *string  `json:"TagKey"`
	TagValue []string `json:"TagValue"`
}

func noMemberAccount(m *memberAccount) error {
	if m != nil && (m.MemberAppId != nil || m.MemberUin != nil) {
		return apiErrorf("UnsupportedOperation", "MemberAccount is not supported")
	}
	return nil
}

// KeyMetadata is the API 3.0 KeyMetadata; CurrentVersion is hsmkms's
// extension (clients ignore unknown fields).
type KeyMetadata struct {
	KeyID              string `json:"KeyId"`
	Alias              string `json:"Alias"`
	CreateTime         uint64 `json:"CreateTime"`
	Description        string `json:"Description"`
	KeyState           string `json:"KeyState"`
	KeyUsage           string `json:"KeyUsage"`
	Type               int64  `json:"Type"`
	CreatorUin         uint64 `json:"CreatorUin"`
	KeyRotationEnabled bool   `json:"KeyRotationEnabled"`
	Owner              string `json:"Owner"`
	NextRotateTime     uint64 `json:"NextRotateTime"`
	DeletionDate       uint64 `json:"DeletionDate"`
	Origin             string `json:"Origin"`
	ValidTo            uint64 `json:"ValidTo"`
	ResourceID         string `json:"ResourceId"`
	HsmClusterID       string `json:"HsmClusterId"`
	RotateDays         uint64 `json:"RotateDays"`
	LastRotateTime     uint64 `json:"LastRotateTime"`
	CurrentVersion     uint32 `json:"CurrentVersion"`
}

func unix(t interface{ Unix() int64 }, zero bool) uint64 {
	if zero {
		return 0
	}
	return uint64(t.Unix())
}

func toKeyMetadata(md kms.KeyMetadata) KeyMetadata {
	return KeyMetadata{
		KeyID: md.KeyID, Alias: md.Alias, CreateTime: uint64(md.CreateTime.Unix()), Description: md.Description,
		KeyState: md.KeyState, KeyUsage: md.KeyUsage, Type: 2, KeyRotationEnabled: md.KeyRotationEnabled,
		Owner: "user", NextRotateTime: unix(md.NextRotateTime, md.NextRotateTime.IsZero()),
		DeletionDate: unix(md.DeletionDate, md.DeletionDate.IsZero()), Origin: md.Origin,
		ResourceID: "creatorUin/0/" + md.KeyID, RotateDays: uint64(md.RotateDays),
		LastRotateTime: unix(md.LastRotateTime, md.LastRotateTime.IsZero()), CurrentVersion: md.CurrentVersion,
		ValidTo: unix(md.ValidTo, md.ValidTo.IsZero()),
	}
}

type keyIDRequest struct {
	KeyId         *string        `json:"KeyId"`
	MemberAccount *memberAccount `json:"MemberAccount"`
}

func requireKeyID(ctx context.Context, id *string, m *memberAccount) (string, error) {
	if id == nil || *id == "" {
		return "", apiErrorf("MissingParameter", "the KeyId parameter is missing")
	}
	if err := noMemberAccount(m); err != nil {
		return "", err
	}
	noteKey(ctx, *id, 0)
	return *id, nil
}

type keyIDsRequest struct {
	KeyIds        []string       `json:"KeyIds"`
	MemberAccount *memberAccount `json:"MemberAccount"`
}

func requireKeyIDs(req *keyIDsRequest) ([]string, error) {
	if len(req.KeyIds) == 0 {
		return nil, apiErrorf("MissingParameter", "the KeyIds parameter is missing")
	}
	if err := noMemberAccount(req.MemberAccount); err != nil {
		return nil, err
	}
	return req.KeyIds, nil
}

type keyIDResponse struct {
	KeyID string `json:"KeyId"`
	responseBase
}

// DescribeKey, DescribeKeys

type describeKeyResponse struct {
	KeyMetadata KeyMetadata `json:"KeyMetadata"`
	responseBase
}

func (s *Server) describeKey(ctx context.Context, req *keyIDRequest) (*describeKeyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.DescribeKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return &describeKeyResponse{KeyMetadata: toKeyMetadata(md)}, nil
}

type keyMetadatasResponse struct {
	TotalCount   *uint64       `json:"TotalCount,omitempty"`
	KeyMetadatas []KeyMetadata `json:"KeyMetadatas"`
	responseBase
}

func (s *Server) describeKeys(ctx context.Context, req *keyIDsRequest) (*keyMetadatasResponse, error) {
	ids, err := requireKeyIDs(req)
	if err != nil {
		return nil, err
	}
	mds, err := s.kms.DescribeKeys(ctx, ids)
	if err != nil {
		return nil, err
	}
	out := &keyMetadatasResponse{KeyMetadatas: make([]KeyMetadata, len(mds))}
	for i, md := range mds {
		out.KeyMetadatas[i] = toKeyMetadata(md)
	}
	return out, nil
}

// ListKeys, ListKeyDetail

const (
	defaultListLimit = 10
	maxListLimit     = 200
)

type listKeysRequest struct {
	Offset       *uint64 `json:"Offset"`
	Limit        *uint64 `json:"Limit"`
	Role         *uint64 `json:"Role"`
	HsmClusterId *string `json:"HsmClusterId"`
}

type keyRef struct {
	KeyID string `json:"KeyId"`
}

type listKeysResponse struct {
	Keys       []keyRef `json:"Keys"`
	TotalCount uint64   `json:"TotalCount"`
	responseBase
}

// paging checks Offset, Limit, Role and HsmClusterId; cloud products
// (Role 1) own no keys on-prem, which the caller answers with an empty list.
func paging(offset, limit, role *uint64, cluster *string) (in kms.ListKeysInput, none bool, err error) {
	in.Limit = defaultListLimit
	if limit != nil {
		if *limit == 0 || *limit > maxListLimit {
			return in, false, apiErrorf("InvalidParameterValue", "the Limit must be 1 to 200")
		}
		in.Limit = int(*limit)
	}
	if offset != nil {
		if *offset > 1<<31 {
			return in, false, apiErrorf("InvalidParameterValue", "the Offset is too large")
		}
		in.Offset = int(*offset)
	}
	if cluster != nil && *cluster != "" {
		return in, false, apiErrorf("InvalidParameterValue.InvalidHsmClusterId", "HSM clusters are not supported")
	}
	if role != nil {
		switch *role {
		case 0:
		case 1:
			none = true
		default:
			return in, false, apiErrorf("InvalidParameterValue", "the Role must be 0 or 1")
		}
	}
	return in, none, nil
}

func (s *Server) listKeys(ctx context.Context, req *listKeysRequest) (*listKeysResponse, error) {
	in, none, err := paging(req.Offset, req.Limit, req.Role, req.HsmClusterId)
	if err != nil {
		return nil, err
	}
	res, err := s.kms.ListKeys(ctx, in)
	if err != nil {
		return nil, err
	}
	out := &listKeysResponse{Keys: []keyRef{}}
	if none {
		return out, nil
	}
	out.TotalCount = uint64(res.TotalCount)
	for _, k := range res.Keys {
		out.Keys = append(out.Keys, keyRef{KeyID: k.KeyID})
	}
	return out, nil
}

type listKeyDetailRequest struct {
	Offset         *uint64             `json:"Offset"`
	Limit          *uint64             `json:"Limit"`
	Role           *uint64             `json:"Role"`
	OrderType      *uint64             `json:"OrderType"`
	KeyState       *uint64             `json:"KeyState"`
	SearchKeyAlias *string             `json:"SearchKeyAlias"`
	Origin         *string             `json:"Origin"`
	KeyUsage       *string             `json:"KeyUsage"`
	TagFilters     []resourceTagFilter `json:"TagFilters"`
	HsmClusterId   *string             `json:"HsmClusterId"`
	MemberAccounts []memberAccount     `json:"MemberAccounts"`
}

// keyStateFilter maps ListKeyDetail's KeyState numbers to states.
var keyStateFilter = map[uint64][]string{
	0: nil,
	1: {kms.StateEnabled},
	2: {kms.StateDisabled},
	3: {kms.StatePendingDelete},
	4: {kms.StatePendingImport},
	5: {kms.StateArchived},
}

func (s *Server) listKeyDetail(ctx context.Context, req *listKeyDetailRequest) (*keyMetadatasResponse, error) {
	in, none, err := paging(req.Offset, req.Limit, req.Role, req.HsmClusterId)
	if err != nil {
		return nil, err
	}
	if in.TagFilters, err = toDomainFilters(req.TagFilters, 10); err != nil {
		return nil, err
	}
	if len(req.MemberAccounts) > 0 {
		return nil, apiErrorf("UnsupportedOperation", "MemberAccounts is not supported")
	}
	in.Descending = true
	if req.OrderType != nil {
		switch *req.OrderType {
		case 0:
		case 1:
			in.Descending = false
		default:
			return nil, apiErrorf("InvalidParameterValue", "the OrderType must be 0 (newest first) or 1 (oldest first)")
		}
	}
	if req.KeyState != nil {
		states, ok := keyStateFilter[*req.KeyState]
		if !ok {
			return nil, apiErrorf("InvalidParameterValue", "the KeyState must be 0 to 5")
		}
		in.States = states
	}
	in.Search = deref(req.SearchKeyAlias)
	switch o := deref(req.Origin); o {
	case "", "ALL":
	case kms.OriginTencentKMS, "EXTERNAL":
		in.Origin = o
	default:
		return nil, apiErrorf("InvalidParameterValue", "the Origin must be TENCENT_KMS, EXTERNAL or ALL")
	}
	in.KeyUsage = deref(req.KeyUsage)
	if in.KeyUsage == "" {
		in.KeyUsage = kms.DefaultKeyUsage
	}
	res, err := s.kms.ListKeyDetail(ctx, in)
	if err != nil {
		return nil, err
	}
	total := uint64(0)
	out := &keyMetadatasResponse{TotalCount: &total, KeyMetadatas: []KeyMetadata{}}
	if none {
		return out, nil
	}
	total = uint64(res.TotalCount)
	for _, md := range res.Keys {
		out.KeyMetadatas = append(out.KeyMetadatas, toKeyMetadata(md))
	}
	return out, nil
}

// State changes

func (s *Server) simple(ctx context.Context, req *keyIDRequest, f func(context.Context, string) error) (*emptyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	if err := f(ctx, id); err != nil {
		return nil, err
	}
	return &emptyResponse{}, nil
}

func (s *Server) enableKey(ctx context.Context, req *keyIDRequest) (*emptyResponse, error) {
	return s.simple(ctx, req, s.kms.EnableKey)
}

func (s *Server) disableKey(ctx context.Context, req *keyIDRequest) (*emptyResponse, error) {
	return s.simple(ctx, req, s.kms.DisableKey)
}

func (s *Server) archiveKey(ctx context.Context, req *keyIDRequest) (*emptyResponse, error) {
	return s.simple(ctx, req, s.kms.ArchiveKey)
}

func (s *Server) cancelKeyArchive(ctx context.Context, req *keyIDRequest) (*emptyResponse, error) {
	return s.simple(ctx, req, s.kms.CancelKeyArchive)
}

func (s *Server) disableKeyRotation(ctx context.Context, req *keyIDRequest) (*emptyResponse, error) {
	return s.simple(ctx, req, s.kms.DisableKeyRotation)
}

func (s *Server) enableKeys(ctx context.Context, req *keyIDsRequest) (*emptyResponse, error) {
	ids, err := requireKeyIDs(req)
	if err != nil {
		return nil, err
	}
	return &emptyResponse{}, s.kms.EnableKeys(ctx, ids)
}

func (s *Server) disableKeys(ctx context.Context, req *keyIDsRequest) (*emptyResponse, error) {
	ids, err := requireKeyIDs(req)
	if err != nil {
		return nil, err
	}
	return &emptyResponse{}, s.kms.DisableKeys(ctx, ids)
}

type scheduleKeyDeletionRequest struct {
	KeyId               *string        `json:"KeyId"`
	PendingWindowInDays *uint64        `json:"PendingWindowInDays"`
	MemberAccount       *memberAccount `json:"MemberAccount"`
}

type scheduleKeyDeletionResponse struct {
	DeletionDate uint64 `json:"DeletionDate"`
	KeyID        string `json:"KeyId"`
	responseBase
}

func (s *Server) scheduleKeyDeletion(ctx context.Context, req *scheduleKeyDeletionRequest) (*scheduleKeyDeletionResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	if req.PendingWindowInDays == nil {
		return nil, apiErrorf("MissingParameter", "the PendingWindowInDays parameter is missing")
	}
	days := *req.PendingWindowInDays
	if days > kms.MaxPendingWindowDays {
		days = kms.MaxPendingWindowDays + 1 // refused by the domain, without overflow
	}
	md, err := s.kms.ScheduleKeyDeletion(ctx, id, int(days))
	if err != nil {
		return nil, err
	}
	return &scheduleKeyDeletionResponse{DeletionDate: uint64(md.DeletionDate.Unix()), KeyID: md.KeyID}, nil
}

func (s *Server) cancelKeyDeletion(ctx context.Context, req *keyIDRequest) (*keyIDResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.CancelKeyDeletion(ctx, id)
	if err != nil {
		return nil, err
	}
	return &keyIDResponse{KeyID: md.KeyID}, nil
}

type updateAliasRequest struct {
	Alias         *string        `json:"Alias"`
	KeyId         *string        `json:"KeyId"`
	MemberAccount *memberAccount `json:"MemberAccount"`
}

func (s *Server) updateAlias(ctx context.Context, req *updateAliasRequest) (*emptyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	if _, err := requireString("Alias", req.Alias); err != nil {
		return nil, err
	}
	return &emptyResponse{}, s.kms.UpdateAlias(ctx, id, *req.Alias)
}

type updateKeyDescriptionRequest struct {
	Description   *string        `json:"Description"`
	KeyId         *string        `json:"KeyId"`
	MemberAccount *memberAccount `json:"MemberAccount"`
}

func (s *Server) updateKeyDescription(ctx context.Context, req *updateKeyDescriptionRequest) (*emptyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	if req.Description == nil {
		return nil, apiErrorf("MissingParameter", "the Description parameter is missing")
	}
	return &emptyResponse{}, s.kms.UpdateKeyDescription(ctx, id, *req.Description)
}

// Rotation

type rotateKeyResponse struct {
	TaskID         string `json:"TaskId"`
	CurrentVersion uint32 `json:"CurrentVersion"` // hsmkms extension
	responseBase
}

func (s *Server) rotateKey(ctx context.Context, req *keyIDRequest) (*rotateKeyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.RotateKey(ctx, id)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, md.KeyID, md.CurrentVersion)
	// Rotation completes synchronously; the task id only names it.
	return &rotateKeyResponse{TaskID: uuid.NewString(), CurrentVersion: md.CurrentVersion}, nil
}

type enableKeyRotationRequest struct {
	KeyId         *string        `json:"KeyId"`
	RotateDays    *uint64        `json:"RotateDays"`
	MemberAccount *memberAccount `json:"MemberAccount"`
}

func (s *Server) enableKeyRotation(ctx context.Context, req *enableKeyRotationRequest) (*emptyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	days := 0 // the default period
	if req.RotateDays != nil {
		if *req.RotateDays < kms.MinRotateDays || *req.RotateDays > kms.MaxRotateDays {
			return nil, apiErrorf("InvalidParameterValue", "the RotateDays must be 7 to 365")
		}
		days = int(*req.RotateDays)
	}
	return &emptyResponse{}, s.kms.EnableKeyRotation(ctx, id, days)
}

type keyRotationStatusResponse struct {
	KeyRotationEnabled bool `json:"KeyRotationEnabled"`
	// hsmkms extensions.
	RotateDays     uint64 `json:"RotateDays"`
	LastRotateTime uint64 `json:"LastRotateTime"`
	NextRotateTime uint64 `json:"NextRotateTime"`
	CurrentVersion uint32 `json:"CurrentVersion"`
	responseBase
}

func (s *Server) getKeyRotationStatus(ctx context.Context, req *keyIDRequest) (*keyRotationStatusResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.GetKeyRotationStatus(ctx, id)
	if err != nil {
		return nil, err
	}
	return &keyRotationStatusResponse{
		KeyRotationEnabled: md.KeyRotationEnabled, RotateDays: uint64(md.RotateDays),
		LastRotateTime: unix(md.LastRotateTime, md.LastRotateTime.IsZero()),
		NextRotateTime: unix(md.NextRotateTime, md.NextRotateTime.IsZero()), CurrentVersion: md.CurrentVersion,
	}, nil
}

type keyVersionView struct {
	Version         uint32 `json:"Version"`
	CreateTime      uint64 `json:"CreateTime"`
	EncryptionCount uint64 `json:"EncryptionCount"`
	Current         bool   `json:"Current"`
}

type listKeyVersionsResponse struct {
	KeyID      string           `json:"KeyId"`
	UsageLimit uint64           `json:"UsageLimit"`
	Versions   []keyVersionView `json:"Versions"`
	responseBase
}

func (s *Server) listKeyVersions(ctx context.Context, req *keyIDRequest) (*listKeyVersionsResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	vs, err := s.kms.KeyVersions(ctx, id)
	if err != nil {
		return nil, err
	}
	out := &listKeyVersionsResponse{KeyID: id, UsageLimit: s.kms.UsageLimit(), Versions: make([]keyVersionView, len(vs))}
	for i, v := range vs {
		out.Versions[i] = keyVersionView{Version: v.Version, CreateTime: uint64(v.CreatedAt.Unix()), EncryptionCount: v.EncryptionCount, Current: v.Current}
	}
	return out, nil
}
