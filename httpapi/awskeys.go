package httpapi

import (
	"context"
	"strconv"

	"github.com/google/uuid"

	"hsmkms/kms"
)

// The actions of the AWS KMS API (aws.go). Each one is a thin adapter, as
// in API 3.0: key names are resolved and wire ranges checked here; the
// rules and the authorisation live in the domain. Fields AWS defines and
// hsmkms does not serve are accepted when absent and refused when given.

// AWSKeyAdmin is the part of the domain the AWS API needs beyond KMS.
// *kms.Service implements it.
type AWSKeyAdmin interface {
	KeyIDForAlias(alias string) (string, error)
	SetAlias(ctx context.Context, action, keyID, alias string, replace bool) error
	MoveAlias(ctx context.Context, action, from, to, alias string) error
	ListAliases(ctx context.Context, in kms.ListKeysInput) (kms.ListKeysResult, error)
	GenerateDataKeyWithoutPlaintext(ctx context.Context, in kms.GenerateDataKeyInput) (kms.GenerateDataKeyResult, error)
	DisableAndScheduleKeyDeletion(ctx context.Context, keyID string, pendingWindowInDays int) (kms.KeyMetadata, error)
}

func (s *Server) awsAdmin() (AWSKeyAdmin, error) {
	a, ok := s.kms.(AWSKeyAdmin)
	if !ok {
		return nil, awsErrorf("UnsupportedOperationException", "this server's domain does not serve the AWS API's own actions")
	}
	return a, nil
}

// symmetricDefault is the only key spec and encryption algorithm served.
const symmetricDefault = "SYMMETRIC_DEFAULT"

func awsRegion(ctx context.Context) string {
	if r := infoFrom(ctx).aws; r != nil {
		return r.region
	}
	return ""
}

func unsupported(field string) error {
	return awsErrorf("UnsupportedOperationException", field+" is not supported by this server")
}

func checkAlgorithm(field string, v *string) error {
	if isAsymAlgorithm(v) {
		return awsErrorf("UnsupportedOperationException", field+" "+*v+" is not supported here (asymmetric ciphertexts are served by Encrypt and Decrypt only)")
	}
	if v != nil && *v != "" && *v != symmetricDefault {
		return awsErrorf("ValidationException", field+" must be SYMMETRIC_DEFAULT (the only algorithm of a symmetric key)")
	}
	return nil
}

func checkDryRun(dry *bool) error {
	if dry != nil && *dry {
		return unsupported("DryRun")
	}
	return nil
}

func required(field string, v *string) error {
	if v == nil || *v == "" {
		return awsErrorf("ValidationException", "1 validation error detected: Value null at '"+field+"' failed to satisfy constraint: Member must not be null")
	}
	return nil
}

// blobKey resolves ref and refuses it unless it names the key of blob
// (IncorrectKeyException), as Decrypt and ReEncrypt do with a KeyId.
func (s *Server) blobKey(ctx context.Context, field string, ref *string, blob string) error {
	if ref == nil || *ref == "" {
		return nil
	}
	id, err := s.resolveKey(ctx, field, ref)
	if err != nil {
		return err
	}
	env, err := kms.ParseBlob(blob)
	if err != nil {
		return err
	}
	if uuid.UUID(env.KeyID).String() != id {
		return awsErrorf("IncorrectKeyException", "The key ID in the request does not identify a KMS key that can perform this operation: the ciphertext was made under another key")
	}
	return nil
}

// Encrypt

type awsEncryptRequest struct {
	KeyId               *string    `json:"KeyId"`
	Plaintext           *string    `json:"Plaintext"`
	EncryptionContext   awsContext `json:"EncryptionContext"`
	GrantTokens         []string   `json:"GrantTokens"`
	EncryptionAlgorithm *string    `json:"EncryptionAlgorithm"`
	DryRun              *bool      `json:"DryRun"`
}

type awsEncryptResponse struct {
	CiphertextBlob      []byte `json:"CiphertextBlob"`
	KeyID               string `json:"KeyId"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

func (s *Server) awsEncrypt(ctx context.Context, req *awsEncryptRequest) (*awsEncryptResponse, error) {
	if err := required("plaintext", req.Plaintext); err != nil {
		return nil, err
	}
	if isAsymAlgorithm(req.EncryptionAlgorithm) {
		return s.awsRSAEncrypt(ctx, req) // awsasym.go
	}
	if err := checkAlgorithm("EncryptionAlgorithm", req.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := checkDryRun(req.DryRun); err != nil {
		return nil, err
	}
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	pt, err := decodePlaintext(*req.Plaintext)
	if err != nil {
		return nil, awsErrorf("SerializationException", "the Plaintext is not standard base64")
	}
	res, err := s.kms.Encrypt(ctx, kms.EncryptInput{KeyID: id, Plaintext: pt, EncryptionContext: req.EncryptionContext.String()})
	clear(pt)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &awsEncryptResponse{CiphertextBlob: res.Ciphertext, KeyID: s.keyARN(awsRegion(ctx), res.KeyID), EncryptionAlgorithm: symmetricDefault}, nil
}

// Decrypt

type awsDecryptRequest struct {
	CiphertextBlob      *string        `json:"CiphertextBlob"`
	EncryptionContext   awsContext     `json:"EncryptionContext"`
	GrantTokens         []string       `json:"GrantTokens"`
	KeyId               *string        `json:"KeyId"`
	EncryptionAlgorithm *string        `json:"EncryptionAlgorithm"`
	Recipient           awsUnsupported `json:"Recipient"`
	DryRun              *bool          `json:"DryRun"`
	DryRunModifiers     []string       `json:"DryRunModifiers"`
}

type awsDecryptResponse struct {
	KeyID               string `json:"KeyId"`
	Plaintext           []byte `json:"Plaintext"`
	EncryptionAlgorithm string `json:"EncryptionAlgorithm"`
}

func (r *awsDecryptResponse) wipe() { clear(r.Plaintext) }

func (s *Server) awsDecrypt(ctx context.Context, req *awsDecryptRequest) (*awsDecryptResponse, error) {
	if err := required("ciphertextBlob", req.CiphertextBlob); err != nil {
		return nil, err
	}
	if isAsymAlgorithm(req.EncryptionAlgorithm) {
		return s.awsRSADecrypt(ctx, req) // awsasym.go
	}
	if err := checkAlgorithm("EncryptionAlgorithm", req.EncryptionAlgorithm); err != nil {
		return nil, err
	}
	if len(req.Recipient) > 0 {
		return nil, unsupported("Recipient")
	}
	if err := checkDryRun(req.DryRun); err != nil {
		return nil, err
	}
	if err := s.blobKey(ctx, "keyId", req.KeyId, *req.CiphertextBlob); err != nil {
		return nil, err
	}
	res, err := s.kms.Decrypt(ctx, kms.DecryptInput{CiphertextBlob: *req.CiphertextBlob, EncryptionContext: req.EncryptionContext.String()})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &awsDecryptResponse{KeyID: s.keyARN(awsRegion(ctx), res.KeyID), Plaintext: wireBytes(res.Plaintext), EncryptionAlgorithm: symmetricDefault}, nil
}

// ReEncrypt

type awsReEncryptRequest struct {
	CiphertextBlob                 *string    `json:"CiphertextBlob"`
	SourceEncryptionContext        awsContext `json:"SourceEncryptionContext"`
	SourceKeyId                    *string    `json:"SourceKeyId"`
	DestinationKeyId               *string    `json:"DestinationKeyId"`
	DestinationEncryptionContext   awsContext `json:"DestinationEncryptionContext"`
	SourceEncryptionAlgorithm      *string    `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm *string    `json:"DestinationEncryptionAlgorithm"`
	GrantTokens                    []string   `json:"GrantTokens"`
	DryRun                         *bool      `json:"DryRun"`
	DryRunModifiers                []string   `json:"DryRunModifiers"`
}

type awsReEncryptResponse struct {
	CiphertextBlob                 []byte `json:"CiphertextBlob"`
	SourceKeyID                    string `json:"SourceKeyId"`
	KeyID                          string `json:"KeyId"`
	SourceEncryptionAlgorithm      string `json:"SourceEncryptionAlgorithm"`
	DestinationEncryptionAlgorithm string `json:"DestinationEncryptionAlgorithm"`
}

func (s *Server) awsReEncrypt(ctx context.Context, req *awsReEncryptRequest) (*awsReEncryptResponse, error) {
	if err := required("ciphertextBlob", req.CiphertextBlob); err != nil {
		return nil, err
	}
	if err := checkAlgorithm("SourceEncryptionAlgorithm", req.SourceEncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := checkAlgorithm("DestinationEncryptionAlgorithm", req.DestinationEncryptionAlgorithm); err != nil {
		return nil, err
	}
	if err := checkDryRun(req.DryRun); err != nil {
		return nil, err
	}
	if err := s.blobKey(ctx, "sourceKeyId", req.SourceKeyId, *req.CiphertextBlob); err != nil {
		return nil, err
	}
	dst, err := s.resolveKey(ctx, "destinationKeyId", req.DestinationKeyId)
	if err != nil {
		return nil, err
	}
	res, err := s.kms.ReEncrypt(ctx, kms.ReEncryptInput{
		CiphertextBlob: *req.CiphertextBlob, DestinationKeyID: dst,
		SourceEncryptionContext: req.SourceEncryptionContext.String(), DestinationEncryptionContext: req.DestinationEncryptionContext.String(),
	})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	region := awsRegion(ctx)
	return &awsReEncryptResponse{CiphertextBlob: res.Ciphertext, SourceKeyID: s.keyARN(region, res.SourceKeyID), KeyID: s.keyARN(region, res.KeyID),
		SourceEncryptionAlgorithm: symmetricDefault, DestinationEncryptionAlgorithm: symmetricDefault}, nil
}

// GenerateDataKey, GenerateDataKeyWithoutPlaintext

type awsGenerateDataKeyRequest struct {
	KeyId             *string        `json:"KeyId"`
	EncryptionContext awsContext     `json:"EncryptionContext"`
	NumberOfBytes     *int64         `json:"NumberOfBytes"`
	KeySpec           *string        `json:"KeySpec"`
	GrantTokens       []string       `json:"GrantTokens"`
	Recipient         awsUnsupported `json:"Recipient"`
	DryRun            *bool          `json:"DryRun"`
}

type awsGenerateDataKeyResponse struct {
	CiphertextBlob []byte `json:"CiphertextBlob"`
	Plaintext      []byte `json:"Plaintext,omitempty"`
	KeyID          string `json:"KeyId"`
}

func (r *awsGenerateDataKeyResponse) wipe() { clear(r.Plaintext) }

func (s *Server) dataKeyInput(ctx context.Context, req *awsGenerateDataKeyRequest) (kms.GenerateDataKeyInput, error) {
	in := kms.GenerateDataKeyInput{EncryptionContext: req.EncryptionContext.String()}
	if len(req.Recipient) > 0 {
		return in, unsupported("Recipient")
	}
	if err := checkDryRun(req.DryRun); err != nil {
		return in, err
	}
	switch {
	case req.KeySpec != nil && req.NumberOfBytes != nil:
		return in, awsErrorf("ValidationException", "give KeySpec or NumberOfBytes, not both")
	case req.KeySpec == nil && req.NumberOfBytes == nil:
		return in, awsErrorf("ValidationException", "one of KeySpec and NumberOfBytes is required")
	case req.NumberOfBytes != nil:
		if *req.NumberOfBytes < 1 || *req.NumberOfBytes > kms.MaxDataKeyBytes {
			return in, awsErrorf("ValidationException", "NumberOfBytes must be 1 to 1024")
		}
		in.NumberOfBytes = int(*req.NumberOfBytes)
	default:
		if *req.KeySpec != "AES_128" && *req.KeySpec != "AES_256" {
			return in, awsErrorf("ValidationException", "KeySpec must be AES_128 or AES_256")
		}
		in.KeySpec = *req.KeySpec
	}
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	in.KeyID = id
	return in, err
}

func (s *Server) awsGenerateDataKey(ctx context.Context, req *awsGenerateDataKeyRequest) (*awsGenerateDataKeyResponse, error) {
	in, err := s.dataKeyInput(ctx, req)
	if err != nil {
		return nil, err
	}
	res, err := s.kms.GenerateDataKey(ctx, in)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &awsGenerateDataKeyResponse{CiphertextBlob: res.Ciphertext, Plaintext: wireBytes(res.Plaintext), KeyID: s.keyARN(awsRegion(ctx), res.KeyID)}, nil
}

type awsGenerateDataKeyWithoutPlaintextRequest struct {
	KeyId             *string    `json:"KeyId"`
	EncryptionContext awsContext `json:"EncryptionContext"`
	NumberOfBytes     *int64     `json:"NumberOfBytes"`
	KeySpec           *string    `json:"KeySpec"`
	GrantTokens       []string   `json:"GrantTokens"`
	DryRun            *bool      `json:"DryRun"`
}

func (s *Server) awsGenerateDataKeyWithoutPlaintext(ctx context.Context, req *awsGenerateDataKeyWithoutPlaintextRequest) (*awsGenerateDataKeyResponse, error) {
	a, err := s.awsAdmin()
	if err != nil {
		return nil, err
	}
	in, err := s.dataKeyInput(ctx, &awsGenerateDataKeyRequest{KeyId: req.KeyId, EncryptionContext: req.EncryptionContext,
		NumberOfBytes: req.NumberOfBytes, KeySpec: req.KeySpec, DryRun: req.DryRun})
	if err != nil {
		return nil, err
	}
	res, err := a.GenerateDataKeyWithoutPlaintext(ctx, in)
	if err != nil {
		return nil, err
	}
	noteKey(ctx, res.KeyID, res.KeyVersion)
	return &awsGenerateDataKeyResponse{CiphertextBlob: res.Ciphertext, KeyID: s.keyARN(awsRegion(ctx), res.KeyID)}, nil
}

// GenerateRandom

type awsGenerateRandomRequest struct {
	NumberOfBytes    *int64         `json:"NumberOfBytes"`
	CustomKeyStoreId *string        `json:"CustomKeyStoreId"`
	Recipient        awsUnsupported `json:"Recipient"`
}

type awsGenerateRandomResponse struct {
	Plaintext []byte `json:"Plaintext"`
}

func (r *awsGenerateRandomResponse) wipe() { clear(r.Plaintext) }

func (s *Server) awsGenerateRandom(ctx context.Context, req *awsGenerateRandomRequest) (*awsGenerateRandomResponse, error) {
	switch {
	case req.CustomKeyStoreId != nil:
		return nil, unsupported("CustomKeyStoreId")
	case len(req.Recipient) > 0:
		return nil, unsupported("Recipient")
	case req.NumberOfBytes == nil:
		return nil, awsErrorf("ValidationException", "NumberOfBytes is required")
	case *req.NumberOfBytes < 1 || *req.NumberOfBytes > kms.MaxDataKeyBytes:
		return nil, awsErrorf("ValidationException", "NumberOfBytes must be 1 to 1024")
	}
	b, err := s.kms.GenerateRandom(ctx, int(*req.NumberOfBytes))
	if err != nil {
		return nil, err
	}
	return &awsGenerateRandomResponse{Plaintext: wireBytes(b)}, nil
}

// awsKeyMetadata is the AWS KeyMetadata of a key.
type awsKeyMetadata struct {
	AWSAccountID          string   `json:"AWSAccountId"`
	KeyID                 string   `json:"KeyId"`
	Arn                   string   `json:"Arn"`
	CreationDate          int64    `json:"CreationDate"`
	Enabled               bool     `json:"Enabled"`
	Description           string   `json:"Description"`
	KeyUsage              string   `json:"KeyUsage"`
	KeyState              string   `json:"KeyState"`
	DeletionDate          *int64   `json:"DeletionDate,omitempty"`
	Origin                string   `json:"Origin"`
	KeyManager            string   `json:"KeyManager"`
	CustomerMasterKeySpec string   `json:"CustomerMasterKeySpec"`
	KeySpec               string   `json:"KeySpec"`
	EncryptionAlgorithms  []string `json:"EncryptionAlgorithms,omitempty"`
	SigningAlgorithms     []string `json:"SigningAlgorithms,omitempty"`
	MultiRegion           bool     `json:"MultiRegion"`
}

// awsKeyState maps a key state to AWS's: PendingDelete is PendingDeletion;
// Archived (Decrypt only) is reported Disabled, the nearest AWS state.
func awsKeyState(st string) string {
	switch st {
	case kms.StatePendingDelete:
		return "PendingDeletion"
	case kms.StateArchived:
		return kms.StateDisabled
	}
	return st
}

func (s *Server) toAWSKeyMetadata(region string, md kms.KeyMetadata) *awsKeyMetadata {
	k := awsKindOf(md.KeyUsage)
	out := &awsKeyMetadata{
		AWSAccountID: s.awsAccount, KeyID: md.KeyID, Arn: s.keyARN(region, md.KeyID), CreationDate: md.CreateTime.Unix(),
		Enabled: md.KeyState == kms.StateEnabled, Description: md.Description, KeyUsage: k.keyUsage, KeyState: awsKeyState(md.KeyState),
		Origin: "AWS_KMS", KeyManager: "CUSTOMER", CustomerMasterKeySpec: k.keySpec, KeySpec: k.keySpec,
		EncryptionAlgorithms: k.encAlgs, SigningAlgorithms: k.signAlgs,
	}
	if md.Origin != kms.OriginTencentKMS {
		out.Origin = md.Origin
	}
	if !md.DeletionDate.IsZero() {
		d := md.DeletionDate.Unix()
		out.DeletionDate = &d
	}
	return out
}

type awsKeyMetadataResponse struct {
	KeyMetadata *awsKeyMetadata `json:"KeyMetadata"`
}

// CreateKey

type awsCreateKeyRequest struct {
	Policy                         *string  `json:"Policy"`
	Description                    *string  `json:"Description"`
	KeyUsage                       *string  `json:"KeyUsage"`
	CustomerMasterKeySpec          *string  `json:"CustomerMasterKeySpec"`
	KeySpec                        *string  `json:"KeySpec"`
	Origin                         *string  `json:"Origin"`
	CustomKeyStoreId               *string  `json:"CustomKeyStoreId"`
	BypassPolicyLockoutSafetyCheck *bool    `json:"BypassPolicyLockoutSafetyCheck"`
	Tags                           []awsTag `json:"Tags"`
	MultiRegion                    *bool    `json:"MultiRegion"`
	XksKeyId                       *string  `json:"XksKeyId"`
}

func (s *Server) awsCreateKey(ctx context.Context, req *awsCreateKeyRequest) (*awsKeyMetadataResponse, error) {
	switch {
	case req.Policy != nil:
		return nil, awsErrorf("UnsupportedOperationException", "key policies are not supported: authorisation is by credential policies (kmsctl credentials)")
	case req.Origin != nil && *req.Origin != "AWS_KMS":
		return nil, unsupported("an Origin other than AWS_KMS")
	case req.CustomKeyStoreId != nil, req.XksKeyId != nil:
		return nil, unsupported("a custom key store")
	case req.MultiRegion != nil && *req.MultiRegion:
		return nil, unsupported("MultiRegion")
	}
	usage, err := awsCreateUsage(req.KeySpec, req.CustomerMasterKeySpec, req.KeyUsage) // awsasym.go
	if err != nil {
		return nil, err
	}
	tags, err := awsDomainTags(req.Tags) // awstags.go; the domain checks them and tag:TagResources
	if err != nil {
		return nil, err
	}
	md, err := s.kms.CreateKey(ctx, kms.CreateKeyInput{Alias: kms.NewPlaceholderAlias(), Description: deref(req.Description), KeyUsage: usage, Tags: tags})
	if err != nil {
		return nil, err
	}
	noteKey(ctx, md.KeyID, md.CurrentVersion)
	return &awsKeyMetadataResponse{KeyMetadata: s.toAWSKeyMetadata(awsRegion(ctx), md)}, nil
}

// DescribeKey

type awsKeyIDRequest struct {
	KeyId       *string  `json:"KeyId"`
	GrantTokens []string `json:"GrantTokens"`
}

func (s *Server) awsDescribeKey(ctx context.Context, req *awsKeyIDRequest) (*awsKeyMetadataResponse, error) {
	id, err := s.resolveKey(ctx, "keyId", req.KeyId)
	if err != nil {
		return nil, err
	}
	md, err := s.kms.DescribeKey(ctx, id)
	if err != nil {
		return nil, err
	}
	if md.KeyState == kms.StateDeleted {
		return nil, kms.ErrKeyNotFound
	}
	return &awsKeyMetadataResponse{KeyMetadata: s.toAWSKeyMetadata(awsRegion(ctx), md)}, nil
}

// ListKeys

type awsListKeysRequest struct {
	Limit          *int64   `json:"Limit"`
	Marker         *string  `json:"Marker"`
	ResourceOwners []string `json:"ResourceOwners"`
}

type awsKeyListEntry struct {
	KeyID  string `json:"KeyId"`
	KeyArn string `json:"KeyArn"`
}

type awsListKeysResponse struct {
	Keys       []awsKeyListEntry `json:"Keys"`
	NextMarker string            `json:"NextMarker,omitempty"`
	Truncated  bool              `json:"Truncated"`
}

// awsPage reads Limit (1..max, default def) and Marker (the offset of the
// next page, as NextMarker gave it).
func awsPage(limit *int64, marker *string, def, max int) (kms.ListKeysInput, error) {
	in := kms.ListKeysInput{Limit: def}
	if limit != nil {
		if *limit < 1 || *limit > int64(max) {
			return in, awsErrorf("ValidationException", "Limit must be 1 to "+strconv.Itoa(max))
		}
		in.Limit = int(*limit)
	}
	if marker != nil {
		n, err := strconv.Atoi(*marker)
		if err != nil || n < 0 || strconv.Itoa(n) != *marker {
			return in, awsErrorf("InvalidMarkerException", "the Marker is not one this server gave (NextMarker)")
		}
		in.Offset = n
	}
	return in, nil
}

// nextMarker returns the marker after the page res of in, "" at the end.
func nextMarker(in kms.ListKeysInput, res kms.ListKeysResult) string {
	if end := in.Offset + len(res.Keys); end < res.TotalCount {
		return strconv.Itoa(end)
	}
	return ""
}

func (s *Server) awsListKeys(ctx context.Context, req *awsListKeysRequest) (*awsListKeysResponse, error) {
	in, err := awsPage(req.Limit, req.Marker, 100, 1000)
	if err != nil {
		return nil, err
	}
	res, err := s.kms.ListKeys(ctx, in)
	if err != nil {
		return nil, err
	}
	region := awsRegion(ctx)
	out := &awsListKeysResponse{Keys: make([]awsKeyListEntry, 0, len(res.Keys)), NextMarker: nextMarker(in, res)}
	out.Truncated = out.NextMarker != ""
	for _, k := range res.Keys {
		out.Keys = append(out.Keys, awsKeyListEntry{KeyID: k.KeyID, KeyArn: s.keyARN(region, k.KeyID)})
	}
	return out, nil
}
