package httpapi

import (
	"context"
	"encoding/base64"

	"hsmkms/kms"
)

// Asymmetric-key actions of API 3.0 (GetPublicKey, SignByAsymmetricKey,
// VerifyByAsymmetricKey, AsymmetricRsaDecrypt, ListAlgorithms), field for
// field as the Tencent SDK (v1.3.152) models them. Thin adapters: base64
// and presence here, the rules and kms:<Action> authorisation in the
// domain. No message, signature input or plaintext is logged or audited
// (the audit line names the action and the key only).

// Asymmetric is the part of the domain that serves asymmetric keys;
// *kms.Service implements it. A KMS without it answers
// UnsupportedOperation.
type Asymmetric interface {
	GetPublicKey(ctx context.Context, keyID string) (kms.PublicKey, error)
	SignByAsymmetricKey(ctx context.Context, in kms.SignInput) ([]byte, error)
	VerifyByAsymmetricKey(ctx context.Context, in kms.SignInput) (bool, error)
	AsymmetricRsaDecrypt(ctx context.Context, keyID string, ciphertext []byte, algorithm string) (kms.RSADecryptResult, error)
	ListAlgorithms(ctx context.Context) (kms.Algorithms, error)
}

func (s *Server) asymmetric() (Asymmetric, error) {
	a, ok := s.kms.(Asymmetric)
	if !ok {
		return nil, apiErrorf("UnsupportedOperation", "asymmetric keys are not supported by this service")
	}
	return a, nil
}

// GetPublicKey

type getPublicKeyResponse struct {
	KeyID        string `json:"KeyId"`
	PublicKey    string `json:"PublicKey"`
	PublicKeyPem string `json:"PublicKeyPem"`
	responseBase
}

func (s *Server) getPublicKey(ctx context.Context, req *keyIDRequest) (*getPublicKeyResponse, error) {
	id, err := requireKeyID(ctx, req.KeyId, req.MemberAccount)
	if err != nil {
		return nil, err
	}
	a, err := s.asymmetric()
	if err != nil {
		return nil, err
	}
	pk, err := a.GetPublicKey(ctx, id)
	if err != nil {
		return nil, err
	}
	return &getPublicKeyResponse{KeyID: pk.KeyID, PublicKey: base64.StdEncoding.EncodeToString(pk.DER), PublicKeyPem: pk.PEM}, nil
}

// SignByAsymmetricKey, VerifyByAsymmetricKey

type signRequest struct {
	KeyId          *string `json:"KeyId"`
	Algorithm      *string `json:"Algorithm"`
	Message        *string `json:"Message"`
	MessageType    *string `json:"MessageType"`
	SignatureValue *string `json:"SignatureValue"` // VerifyByAsymmetricKey only
}

type signResponse struct {
	Signature string `json:"Signature"`
	responseBase
}

type verifyResponse struct {
	SignatureValid bool `json:"SignatureValid"`
	responseBase
}

// signInput checks and decodes the common fields of Sign and Verify.
func signInput(ctx context.Context, req *signRequest) (kms.SignInput, error) {
	if _, err := requireString("KeyId", req.KeyId); err != nil {
		return kms.SignInput{}, err
	}
	if _, err := requireString("Algorithm", req.Algorithm); err != nil {
		return kms.SignInput{}, err
	}
	if _, err := requireString("Message", req.Message); err != nil {
		return kms.SignInput{}, err
	}
	msg, err := decodeBase64(*req.Message)
	if err != nil {
		return kms.SignInput{}, apiErrorf("InvalidParameterValue", "the Message is not standard base64")
	}
	noteKey(ctx, *req.KeyId, 0)
	return kms.SignInput{KeyID: *req.KeyId, Algorithm: *req.Algorithm, Message: msg, MessageType: deref(req.MessageType)}, nil
}

func (s *Server) signByAsymmetricKey(ctx context.Context, req *signRequest) (*signResponse, error) {
	if req.SignatureValue != nil {
		return nil, apiErrorf("UnknownParameter", "SignByAsymmetricKey takes no SignatureValue")
	}
	in, err := signInput(ctx, req)
	if err != nil {
		return nil, err
	}
	a, err := s.asymmetric()
	if err != nil {
		return nil, err
	}
	sig, err := a.SignByAsymmetricKey(ctx, in)
	if err != nil {
		return nil, err
	}
	return &signResponse{Signature: base64.StdEncoding.EncodeToString(sig)}, nil
}

func (s *Server) verifyByAsymmetricKey(ctx context.Context, req *signRequest) (*verifyResponse, error) {
	in, err := signInput(ctx, req)
	if err != nil {
		return nil, err
	}
	if _, err := requireString("SignatureValue", req.SignatureValue); err != nil {
		return nil, err
	}
	if in.Signature, err = decodeBase64(*req.SignatureValue); err != nil {
		return nil, apiErrorf("InvalidParameterValue", "the SignatureValue is not standard base64")
	}
	a, err := s.asymmetric()
	if err != nil {
		return nil, err
	}
	ok, err := a.VerifyByAsymmetricKey(ctx, in)
	if err != nil {
		return nil, err
	}
	return &verifyResponse{SignatureValid: ok}, nil
}

// AsymmetricRsaDecrypt

type rsaDecryptRequest struct {
	KeyId      *string `json:"KeyId"`
	Ciphertext *string `json:"Ciphertext"`
	Algorithm  *string `json:"Algorithm"`
}

type rsaDecryptResponse struct {
	KeyID     string `json:"KeyId"`
	Plaintext []byte `json:"Plaintext"`
	responseBase
}

func (r *rsaDecryptResponse) wipe() { clear(r.Plaintext) }

func (s *Server) asymmetricRsaDecrypt(ctx context.Context, req *rsaDecryptRequest) (*rsaDecryptResponse, error) {
	for _, f := range []struct {
		name string
		v    *string
	}{{"KeyId", req.KeyId}, {"Ciphertext", req.Ciphertext}, {"Algorithm", req.Algorithm}} {
		if _, err := requireString(f.name, f.v); err != nil {
			return nil, err
		}
	}
	ct, err := decodeBase64(*req.Ciphertext)
	if err != nil {
		return nil, apiErrorf("InvalidParameterValue.InvalidCiphertext", "the Ciphertext is not standard base64")
	}
	noteKey(ctx, *req.KeyId, 0)
	a, err := s.asymmetric()
	if err != nil {
		return nil, err
	}
	res, err := a.AsymmetricRsaDecrypt(ctx, *req.KeyId, ct, *req.Algorithm)
	if err != nil {
		return nil, err
	}
	return &rsaDecryptResponse{KeyID: res.KeyID, Plaintext: wireBytes(res.Plaintext)}, nil
}

// ListAlgorithms

type listAlgorithmsRequest struct{}

type algorithmInfo struct {
	KeyUsage  string `json:"KeyUsage"`
	Algorithm string `json:"Algorithm"`
}

type listAlgorithmsResponse struct {
	SymmetricAlgorithms            []algorithmInfo `json:"SymmetricAlgorithms"`
	AsymmetricAlgorithms           []algorithmInfo `json:"AsymmetricAlgorithms"`
	AsymmetricSignVerifyAlgorithms []algorithmInfo `json:"AsymmetricSignVerifyAlgorithms"`
	responseBase
}

func toAlgorithmInfos(in []kms.AlgorithmInfo) []algorithmInfo {
	out := make([]algorithmInfo, 0, len(in))
	for _, a := range in {
		out = append(out, algorithmInfo{KeyUsage: a.KeyUsage, Algorithm: a.Algorithm})
	}
	return out
}

func (s *Server) listAlgorithms(ctx context.Context, _ *listAlgorithmsRequest) (*listAlgorithmsResponse, error) {
	a, err := s.asymmetric()
	if err != nil {
		return nil, err
	}
	algs, err := a.ListAlgorithms(ctx)
	if err != nil {
		return nil, err
	}
	return &listAlgorithmsResponse{
		SymmetricAlgorithms:            toAlgorithmInfos(algs.Symmetric),
		AsymmetricAlgorithms:           toAlgorithmInfos(algs.Asymmetric),
		AsymmetricSignVerifyAlgorithms: toAlgorithmInfos(algs.AsymmetricSignVerify),
	}, nil
}
