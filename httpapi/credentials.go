package httpapi

import (
	"context"
	"encoding/json"
	"strings"

	"hsmkms/kms"
)

// Credential management: API 3.0 actions of hsmkms's own (Tencent Cloud
// manages credentials in CAM, which an on-prem KMS does not have). They are
// administrative actions, authorised on the resource "*" under their own
// namespace, which no kms: wildcard matches: kms-admin:CreateCredential,
// kms-admin:ListCredentials, kms-admin:EnableCredential,
// kms-admin:DisableCredential, kms-admin:UpdateCredentialPolicy,
// kms-admin:DeleteCredential. The domain also refuses a change to the
// caller itself and any grant beyond the caller's own policy.

// CredentialAdmin is the part of the domain that manages credentials.
// *kms.Service implements it.
type CredentialAdmin interface {
	CreateCredential(ctx context.Context, name string, policy kms.Policy) (kms.CredentialInfo, string, error)
	ListCredentials(ctx context.Context) ([]kms.CredentialInfo, error)
	SetCredentialEnabled(ctx context.Context, secretID string, enabled bool) error
	UpdateCredentialPolicy(ctx context.Context, secretID string, policy kms.Policy) error
	DeleteCredential(ctx context.Context, secretID string) error
}

type credentialRequest struct {
	SecretId *string `json:"SecretId"`
	Name     *string `json:"Name"`
	Policy   *string `json:"Policy"`
}

// CredentialView is one credential in ListCredentials, without its secret.
type CredentialView struct {
	SecretID   string `json:"SecretId"`
	Name       string `json:"Name"`
	Enabled    bool   `json:"Enabled"`
	CreateTime uint64 `json:"CreateTime"`
	Policy     string `json:"Policy"`
}

type createCredentialResponse struct {
	SecretID   string `json:"SecretId"`
	SecretKey  string `json:"SecretKey"`
	Name       string `json:"Name"`
	CreateTime uint64 `json:"CreateTime"`
	responseBase
}

type listCredentialsResponse struct {
	Credentials []CredentialView `json:"Credentials"`
	TotalCount  uint64           `json:"TotalCount"`
	responseBase
}

type emptyResponse struct {
	responseBase
}

func parsePolicyParam(p *string) (kms.Policy, error) {
	if p == nil || *p == "" {
		return kms.Policy{}, apiErrorf("MissingParameter", "the Policy parameter is missing")
	}
	pol, err := kms.ParsePolicy(*p)
	if err != nil {
		return kms.Policy{}, apiErrorf("InvalidParameterValue", strings.TrimPrefix(err.Error(), "kms: "))
	}
	return pol, nil
}

func (s *Server) createCredential(ctx context.Context, req *credentialRequest) (*createCredentialResponse, error) {
	if _, err := requireString("Name", req.Name); err != nil {
		return nil, err
	}
	if req.SecretId != nil {
		return nil, apiErrorf("UnknownParameter", "the parameter SecretId is not recognized")
	}
	pol, err := parsePolicyParam(req.Policy)
	if err != nil {
		return nil, err
	}
	info, key, err := s.admin.CreateCredential(ctx, *req.Name, pol)
	if err != nil {
		return nil, err
	}
	return &createCredentialResponse{SecretID: info.SecretID, SecretKey: key, Name: info.Name, CreateTime: uint64(info.CreatedAt.Unix())}, nil
}

func (s *Server) listCredentials(ctx context.Context, req *credentialRequest) (*listCredentialsResponse, error) {
	if req.SecretId != nil || req.Name != nil || req.Policy != nil {
		return nil, apiErrorf("UnknownParameter", "ListCredentials takes no parameters")
	}
	list, err := s.admin.ListCredentials(ctx)
	if err != nil {
		return nil, err
	}
	out := &listCredentialsResponse{Credentials: make([]CredentialView, 0, len(list)), TotalCount: uint64(len(list))}
	for _, c := range list {
		doc, _ := json.Marshal(c.Policy)
		out.Credentials = append(out.Credentials, CredentialView{SecretID: c.SecretID, Name: c.Name, Enabled: c.Enabled, CreateTime: uint64(c.CreatedAt.Unix()), Policy: string(doc)})
	}
	return out, nil
}

func (s *Server) enableCredential(ctx context.Context, req *credentialRequest) (*emptyResponse, error) {
	return s.setCredentialEnabled(ctx, req, true)
}

func (s *Server) disableCredential(ctx context.Context, req *credentialRequest) (*emptyResponse, error) {
	return s.setCredentialEnabled(ctx, req, false)
}

func (s *Server) setCredentialEnabled(ctx context.Context, req *credentialRequest, enabled bool) (*emptyResponse, error) {
	id, err := requireString("SecretId", req.SecretId)
	if err != nil {
		return nil, err
	}
	if err := s.admin.SetCredentialEnabled(ctx, id, enabled); err != nil {
		return nil, err
	}
	return &emptyResponse{}, nil
}

func (s *Server) updateCredentialPolicy(ctx context.Context, req *credentialRequest) (*emptyResponse, error) {
	id, err := requireString("SecretId", req.SecretId)
	if err != nil {
		return nil, err
	}
	pol, err := parsePolicyParam(req.Policy)
	if err != nil {
		return nil, err
	}
	if err := s.admin.UpdateCredentialPolicy(ctx, id, pol); err != nil {
		return nil, err
	}
	return &emptyResponse{}, nil
}

func (s *Server) deleteCredential(ctx context.Context, req *credentialRequest) (*emptyResponse, error) {
	id, err := requireString("SecretId", req.SecretId)
	if err != nil {
		return nil, err
	}
	if err := s.admin.DeleteCredential(ctx, id); err != nil {
		return nil, err
	}
	return &emptyResponse{}, nil
}
