package httpapi

import (
	"context"
	"encoding/base64"

	"hsmkms/kms"
)

// Imported key material (BYOK): GetParametersForImport, ImportKeyMaterial,
// DeleteImportedKeyMaterial. Field names and types are those of the SDK's
// models (v20190118); the rules live in the domain (kms/import.go).

// KeyImporter is the part of the domain that imports key material.
// *kms.Service implements it; a KMS without it answers UnsupportedOperation.
type KeyImporter interface {
	GetParametersForImport(ctx context.Context, keyID, algorithm, keySpec string) (kms.ImportParameters, error)
	ImportKeyMaterial(ctx context.Context, in kms.ImportKeyMaterialInput) (kms.KeyMetadata, error)
	DeleteImportedKeyMaterial(ctx context.Context, keyID string) (kms.KeyMetadata, error)
}

var _ KeyImporter = (*kms.Service)(nil)

func (s *Server) importer() (KeyImporter, error) {
	if ki, ok := s.kms.(KeyImporter); ok {
		return ki, nil
	}
	return nil, apiErrorf("UnsupportedOperation", "key import is not supported")
}

// importerFor is importer then requireKeyID(ctx, keyID, member): the
// start of every import action. Errors are the wire errors of either.
func (s *Server) importerFor(ctx context.Context, keyID *string, member *memberAccount) (KeyImporter, string, error) {
	ki, err := s.importer()
	if err != nil {
		return nil, "", err
	}
	id, err := requireKeyID(ctx, keyID, member)
	if err != nil {
		return nil, "", err
	}
	return ki, id, nil
}

type getParametersForImportRequest struct {
	KeyId             *string `json:"KeyId"`
	WrappingAlgorithm *string `json:"WrappingAlgorithm"`
	WrappingKeySpec   *string `json:"WrappingKeySpec"`
}

type getParametersForImportResponse struct {
	KeyID             string `json:"KeyId"`
	ImportToken       string `json:"ImportToken"`
	PublicKey         string `json:"PublicKey"`
	ParametersValidTo uint64 `json:"ParametersValidTo"`
	responseBase
}

func (s *Server) getParametersForImport(ctx context.Context, req *getParametersForImportRequest) (*getParametersForImportResponse, error) {
	ki, id, err := s.importerFor(ctx, req.KeyId, nil)
	if err != nil {
		return nil, err
	}
	alg, err := requireString("WrappingAlgorithm", req.WrappingAlgorithm)
	if err != nil {
		return nil, err
	}
	spec, err := requireString("WrappingKeySpec", req.WrappingKeySpec)
	if err != nil {
		return nil, err
	}
	p, err := ki.GetParametersForImport(ctx, id, alg, spec)
	if err != nil {
		return nil, err
	}
	return &getParametersForImportResponse{KeyID: p.KeyID, ImportToken: p.ImportToken,
		PublicKey: base64.StdEncoding.EncodeToString(p.PublicKey), ParametersValidTo: uint64(p.ValidTo.Unix())}, nil
}

type importKeyMaterialRequest struct {
	EncryptedKeyMaterial *string `json:"EncryptedKeyMaterial"`
	ImportToken          *string `json:"ImportToken"`
	KeyId                *string `json:"KeyId"`
	ValidTo              *uint64 `json:"ValidTo"`
}

func (s *Server) importKeyMaterial(ctx context.Context, req *importKeyMaterialRequest) (*responseBase, error) {
	ki, id, err := s.importerFor(ctx, req.KeyId, nil)
	if err != nil {
		return nil, err
	}
	material, err := requireString("EncryptedKeyMaterial", req.EncryptedKeyMaterial)
	if err != nil {
		return nil, err
	}
	token, err := requireString("ImportToken", req.ImportToken)
	if err != nil {
		return nil, err
	}
	in := kms.ImportKeyMaterialInput{KeyID: id, EncryptedKeyMaterial: material, ImportToken: token}
	if req.ValidTo != nil {
		in.ValidTo = *req.ValidTo
	}
	if _, err := ki.ImportKeyMaterial(ctx, in); err != nil {
		return nil, err
	}
	return &responseBase{}, nil
}

func (s *Server) deleteImportedKeyMaterial(ctx context.Context, req *keyIDRequest) (*responseBase, error) {
	ki, id, err := s.importerFor(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	if _, err := ki.DeleteImportedKeyMaterial(ctx, id); err != nil {
		return nil, err
	}
	return &responseBase{}, nil
}
