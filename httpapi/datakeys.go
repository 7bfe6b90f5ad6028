package httpapi

import (
	"context"

	"hsmkms/kms"
)

// The data-key actions of API 3.0: GenerateDataKey, GenerateRandom and
// ReEncrypt.

// Data keys

type generateDataKeyRequest struct {
	KeyId               *string       `json:"KeyId"`
	KeySpec             *string       `json:"KeySpec"`
	NumberOfBytes       *uint64       `json:"NumberOfBytes"`
	EncryptionContext   *string       `json:"EncryptionContext"`
	EncryptionPublicKey *string       `json:"EncryptionPublicKey"`
	EncryptionAlgorithm *string       `json:"EncryptionAlgorithm"`
	IsHostedByKms       *uint64       `json:"IsHostedByKms"`
	DataKeyName         *string       `json:"DataKeyName"`
	Description         *string       `json:"Description"`
	HsmClusterId        *string       `json:"HsmClusterId"`
	Tags                []resourceTag `json:"Tags"`
}

type generateDataKeyResponse struct {
	KeyID          string `json:"KeyId"`
	Plaintext      []byte `json:"Plaintext"`
	CiphertextBlob []byte `json:"CiphertextBlob"`
	DataKeyID      string `json:"DataKeyId"`
	TagCode        uint64 `json:"TagCode"`
	TagMsg         string `json:"TagMsg"`
	responseBase
}

func (r *generateDataKeyResponse) wipe() { clear(r.Plaintext) }

func (s *Server) generateDataKey(ctx context.Context, req *generateDataKeyRequest) (*generateDataKeyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, nil)
	if err != nil {
		return nil, err
	}
	switch {
	case deref(req.EncryptionPublicKey) != "" || deref(req.EncryptionAlgorithm) != "":
		return nil, apiErrorf("UnsupportedOperation", "EncryptionPublicKey is not supported")
	case req.IsHostedByKms != nil && *req.IsHostedByKms != 0:
		// DataKeyName, Description and Tags matter only to a hosted data
		// key (IsHostedByKms=1); without one they are ignored, as Tencent
		// does.
		return nil, apiErrorf("UnsupportedOperation", "data keys hosted by KMS are not supported")
	case deref(req.HsmClusterId) != "":
		return nil, apiErrorf("InvalidParameterValue.InvalidHsmClusterId", "HSM clusters are not supported")
	case req.KeySpec == nil && req.NumberOfBytes == nil:
		return nil, apiErrorf("MissingParameter", "one of KeySpec and NumberOfBytes is required")
	}
	n := 0
	if req.NumberOfBytes != nil {
		if *req.NumberOfBytes < 1 || *req.NumberOfBytes > kms.MaxDataKeyBytes {
			return nil, apiErrorf("InvalidParameter", "the NumberOfBytes must be 1 to 1024")
		}
		n = int(*req.NumberOfBytes)
	}
	res, err := s.kms.GenerateDataKey(ctx, kms.GenerateDataKeyInput{KeyID: id, KeySpec: deref(req.KeySpec), NumberOfBytes: n, EncryptionContext: deref(req.EncryptionContext)})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &generateDataKeyResponse{KeyID: res.KeyID, Plaintext: wireBytes(res.Plaintext), CiphertextBlob: res.Ciphertext}, nil
}

type generateRandomRequest struct {
	NumberOfBytes *uint64 `json:"NumberOfBytes"`
}

type generateRandomResponse struct {
	Plaintext []byte `json:"Plaintext"`
	responseBase
}

func (r *generateRandomResponse) wipe() { clear(r.Plaintext) }

func (s *Server) generateRandom(ctx context.Context, req *generateRandomRequest) (*generateRandomResponse, error) {
	if req.NumberOfBytes == nil {
		return nil, apiErrorf("MissingParameter", "the NumberOfBytes parameter is missing")
	}
	if *req.NumberOfBytes < 1 || *req.NumberOfBytes > kms.MaxDataKeyBytes {
		return nil, apiErrorf("InvalidParameter", "the NumberOfBytes must be 1 to 1024")
	}
	b, err := s.kms.GenerateRandom(ctx, int(*req.NumberOfBytes))
	if err != nil {
		return nil, err
	}
	return &generateRandomResponse{Plaintext: wireBytes(b)}, nil
}

type reEncryptRequest struct {
	CiphertextBlob               *string `json:"CiphertextBlob"`
	DestinationKeyId             *string `json:"DestinationKeyId"`
	SourceEncryptionContext      *string `json:"SourceEncryptionContext"`
	DestinationEncryptionContext *string `json:"DestinationEncryptionContext"`
}

type reEncryptResponse struct {
	CiphertextBlob []byte `json:"CiphertextBlob"`
	KeyID          string `json:"KeyId"`
	SourceKeyID    string `json:"SourceKeyId"`
	ReEncrypted    bool   `json:"ReEncrypted"`
	responseBase
}

func (s *Server) reEncrypt(ctx context.Context, req *reEncryptRequest) (*reEncryptResponse, error) {
	if _, err := requireString("CiphertextBlob", req.CiphertextBlob); err != nil {
		return nil, err
	}
	res, err := s.kms.ReEncrypt(ctx, kms.ReEncryptInput{
		CiphertextBlob: *req.CiphertextBlob, DestinationKeyID: deref(req.DestinationKeyId),
		SourceEncryptionContext: deref(req.SourceEncryptionContext), DestinationEncryptionContext: deref(req.DestinationEncryptionContext),
	})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &reEncryptResponse{CiphertextBlob: res.Ciphertext, KeyID: res.KeyID, SourceKeyID: res.SourceKeyID, ReEncrypted: res.ReEncrypted}, nil
}
