package httpapi

import (
	"context"
	"strings"

	"hsmkms/kms"
)

// The AWS KMS API's key lifecycle, rotation and alias actions (aws.go).
//
// Aliases: a key has exactly one alias, its Tencent alias; alias/<name> is
// the key whose alias is <name>. A key made by the AWS CreateKey (which
// takes no name), or whose alias was deleted, holds a placeholder alias
// (kms.IsPlaceholderAlias), which ListAliases does not list and
// CreateAlias replaces. CreateAlias on a key that already has a real
// alias is refused (LimitExceededException: one alias per key);
// DeleteAlias gives the key a new placeholder; UpdateAlias moves the
// alias in one store transaction (kms.MoveAlias): its former key gets a
// placeholder and the target key (which must hold a placeholder) the
// alias.

type awsEmptyResponse struct{}

type awsKeyOnlyRequest struct {
	KeyId *string `json:"KeyId"`
}

func (s *Server) awsKeyChange(ctx context.Context, ref *string, f func(context.Context, string) error) (*awsEmptyResponse, error) {
	id, err := s.resolveKey(ctx, "keyId", ref)
	if err != nil {
		return nil, err
	}
	if err := f(ctx, id); err != nil {
		return nil, err
	}
	return &awsEmptyResponse{}, nil
}

func (s *Server) awsEnableKey(ctx context.Context, req *awsKeyOnlyRequest) (*awsEmptyResponse, error) {
	return s.awsKeyChange(ctx, req.KeyId, s.kms.EnableKey)
}

func (s *Server) awsDisableKey(ctx context.Context, req *awsKeyOnlyRequest) (*awsEmptyResponse, error) {
	return s.awsKeyChange(ctx, req.KeyId, s.kms.DisableKey)
}

func (s *Server) awsDisableKeyRotation(ctx context.Context, req *awsKeyOnlyRequest) (*awsEmptyResponse, error) {
	return s.awsKeyChange(ctx, req.KeyId, s.kms.DisableKeyRotation)
}

// ScheduleKeyDeletion, CancelKeyDeletion

type awsScheduleKeyDeletionRequest struct {
	KeyId               *string `json:"KeyId"`
	PendingWindowInDays *int64  `json:"PendingWindowInDays"`
}

type awsScheduleKeyDeletionResponse struct {
	KeyID               string `json:"KeyId"`
	DeletionDate        int64  `json:"DeletionDate"`
	KeyState            string `json:"KeyState"`
	PendingWindowInDays int64  `json:"PendingWindowInDays"`
}

// awsScheduleKeyDeletion schedules an Enabled or Disabled key's deletion,
// as AWS does (an Enabled key is disabled in the same change, which needs
// kms:DisableKey too).
func (s *Server) awsScheduleKeyDeletion(ctx context.Context, req *awsScheduleKeyDeletionRequest) (*awsScheduleKeyDeletionResponse, error) {
	a, err := s.awsAdmin()
	if err != nil {
		return nil, err
	}
	days := int64(kms.MaxPendingWindowDays) // AWS's default, 30
	if req.PendingWindowInDays != nil {
		days = *req.PendingWindowInDays
		if days < kms.MinPendingWindowDays || days > kms.MaxPendingWindowDays {
			return nil, awsErrorf("ValidationException", "PendingWindowInDays must be 7 to 30")
		}
	}
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	md, err := a.DisableAndScheduleKeyDeletion(ctx, id, int(days))
	if err != nil {
		return nil, err
	}
	return &awsScheduleKeyDeletionResponse{KeyID: s.keyARN(awsRegion(ctx), md.KeyID), DeletionDate: md.DeletionDate.Unix(),
		KeyState: awsKeyState(md.KeyState), PendingWindowInDays: days}, nil
}

type awsKeyIDResponse struct {
	KeyID string `json:"KeyId"`
}

func (s *Server) awsCancelKeyDeletion(ctx context.Context, req *awsKeyOnlyRequest) (*awsKeyIDResponse, error) {
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.CancelKeyDeletion(ctx, id)
	if err != nil {
		return nil, err
	}
	return &awsKeyIDResponse{KeyID: s.keyARN(awsRegion(ctx), md.KeyID)}, nil
}

// Rotation

type awsEnableKeyRotationRequest struct {
	KeyId                *string `json:"KeyId"`
	RotationPeriodInDays *int64  `json:"RotationPeriodInDays"`
}

func (s *Server) awsEnableKeyRotation(ctx context.Context, req *awsEnableKeyRotationRequest) (*awsEmptyResponse, error) {
	days := 0
	if p := req.RotationPeriodInDays; p != nil {
		if *p < kms.MinRotateDays || *p > kms.MaxRotateDays {
			return nil, awsErrorf("ValidationException", "RotationPeriodInDays must be 7 to 365 on this server")
		}
		days = int(*p)
	}
	return s.awsKeyChange(ctx, req.KeyId, func(ctx context.Context, id string) error {
		return s.kms.EnableKeyRotation(ctx, id, days)
	})
}

type awsKeyRotationStatusResponse struct {
	KeyID                string `json:"KeyId"`
	KeyRotationEnabled   bool   `json:"KeyRotationEnabled"`
	RotationPeriodInDays *int64 `json:"RotationPeriodInDays,omitempty"`
	NextRotationDate     *int64 `json:"NextRotationDate,omitempty"`
}

func (s *Server) awsGetKeyRotationStatus(ctx context.Context, req *awsKeyOnlyRequest) (*awsKeyRotationStatusResponse, error) {
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.GetKeyRotationStatus(ctx, id)
	if err != nil {
		return nil, err
	}
	out := &awsKeyRotationStatusResponse{KeyID: s.keyARN(awsRegion(ctx), md.KeyID), KeyRotationEnabled: md.KeyRotationEnabled}
	if md.KeyRotationEnabled {
		days := int64(md.RotateDays)
		out.RotationPeriodInDays = &days
		if !md.NextRotateTime.IsZero() {
			next := md.NextRotateTime.Unix()
			out.NextRotationDate = &next
		}
	}
	return out, nil
}

func (s *Server) awsRotateKeyOnDemand(ctx context.Context, req *awsKeyOnlyRequest) (*awsKeyIDResponse, error) {
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.RotateKey(ctx, id)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, md.KeyID, md.CurrentVersion)
	return &awsKeyIDResponse{KeyID: s.keyARN(awsRegion(ctx), md.KeyID)}, nil
}

// Aliases

type awsAliasRequest struct {
	AliasName   *string `json:"AliasName"`
	TargetKeyId *string `json:"TargetKeyId"`
}

// awsAliasTarget reads CreateAlias's and UpdateAlias's parameters: the
// alias name and the key it is to name.
func (s *Server) awsAliasTarget(ctx context.Context, req *awsAliasRequest) (a AWSKeyAdmin, name, target string, err error) {
	if a, err = s.awsAdmin(); err != nil {
		return nil, "", "", err
	}
	if name, err = aliasName("aliasName", req.AliasName); err != nil {
		return nil, "", "", err
	}
	if target, err = s.resolveKey(ctx, "targetKeyId", req.TargetKeyId); err != nil {
		return nil, "", "", err
	}
	return a, name, target, nil
}

// awsAliasHolder returns the key the alias name names, or AWS's
// NotFoundException.
func (s *Server) awsAliasHolder(ctx context.Context, a AWSKeyAdmin, name string) (string, error) {
	id, err := a.KeyIDForAlias(name)
	if err != nil {
		return "", awsErrorf("NotFoundException", "Alias "+s.aliasARN(awsRegion(ctx), truncate(name, 256))+" is not found.")
	}
	return id, nil
}

func (s *Server) awsCreateAlias(ctx context.Context, req *awsAliasRequest) (*awsEmptyResponse, error) {
	a, name, id, err := s.awsAliasTarget(ctx, req)
	if err != nil {
		return nil, err
	}
	if _, err := a.KeyIDForAlias(name); err == nil {
		return nil, awsErrorf("AlreadyExistsException", "An alias with the name "+s.aliasARN(awsRegion(ctx), truncate(name, 256))+" already exists")
	}
	return &awsEmptyResponse{}, a.SetAlias(ctx, "kms:CreateAlias", id, name, false)
}

type awsAliasNameRequest struct {
	AliasName *string `json:"AliasName"`
}

func (s *Server) awsDeleteAlias(ctx context.Context, req *awsAliasNameRequest) (*awsEmptyResponse, error) {
	a, err := s.awsAdmin()
	if err != nil {
		return nil, err
	}
	name, err := aliasName("aliasName", req.AliasName)
	if err != nil {
		return nil, err
	}
	id, err := s.awsAliasHolder(ctx, a, name)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, id, 0)
	return &awsEmptyResponse{}, a.SetAlias(ctx, "kms:DeleteAlias", id, kms.NewPlaceholderAlias(), true)
}

// awsUpdateAlias moves the alias to the target key in one store
// transaction (kms.MoveAlias, authorised on both keys, also when the alias
// already names the target).
func (s *Server) awsUpdateAlias(ctx context.Context, req *awsAliasRequest) (*awsEmptyResponse, error) {
	a, name, target, err := s.awsAliasTarget(ctx, req)
	if err != nil {
		return nil, err
	}
	holder, err := s.awsAliasHolder(ctx, a, name)
	if err != nil {
		return nil, err
	}
	if err := a.MoveAlias(ctx, "kms:UpdateAlias", holder, target, name); err != nil {
		return nil, err
	}
	noteKey(ctx, target, 0)
	return &awsEmptyResponse{}, nil
}

type awsListAliasesRequest struct {
	KeyId  *string `json:"KeyId"`
	Limit  *int64  `json:"Limit"`
	Marker *string `json:"Marker"`
}

type awsAliasListEntry struct {
	AliasName       string `json:"AliasName"`
	AliasArn        string `json:"AliasArn"`
	TargetKeyID     string `json:"TargetKeyId"`
	CreationDate    int64  `json:"CreationDate"`
	LastUpdatedDate int64  `json:"LastUpdatedDate"`
}

type awsListAliasesResponse struct {
	Aliases    []awsAliasListEntry `json:"Aliases"`
	NextMarker string              `json:"NextMarker,omitempty"`
	Truncated  bool                `json:"Truncated"`
}

func (s *Server) awsListAliases(ctx context.Context, req *awsListAliasesRequest) (*awsListAliasesResponse, error) {
	a, err := s.awsAdmin()
	if err != nil {
		return nil, err
	}
	in, err := awsPage(req.Limit, req.Marker, 50, 100)
	if err != nil {
		return nil, err
	}
	only := ""
	if req.KeyId != nil {
		if only, err = s.resolveKey(ctx, "keyId", req.KeyId); err != nil {
			return nil, err
		}
		in.Search = only
	}
	res, err := a.ListAliases(ctx, in)
	if err != nil {
		return nil, err
	}
	region := awsRegion(ctx)
	out := &awsListAliasesResponse{Aliases: []awsAliasListEntry{}, NextMarker: nextMarker(in, res)}
	out.Truncated = out.NextMarker != ""
	for _, k := range res.Keys {
		if kms.IsPlaceholderAlias(k.Alias) || (only != "" && !strings.EqualFold(k.KeyID, only)) {
			continue
		}
		out.Aliases = append(out.Aliases, awsAliasListEntry{AliasName: "alias/" + k.Alias, AliasArn: s.aliasARN(region, k.Alias),
			TargetKeyID: k.KeyID, CreationDate: k.CreateTime.Unix(), LastUpdatedDate: k.CreateTime.Unix()})
	}
	return out, nil
}
