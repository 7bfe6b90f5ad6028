package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"strings"

	"hsmkms/kms"
)

// This file is the one table mapping each domain error to its wire codes:
// its API 3.0 code and message, its legacy code and message, and the level
// at which it is logged (errors that are not the caller's fault are logged
// with the request id and answered without detail).

// errorRow maps the domain errors errs to their wire answers.
type errorRow struct {
	errs []error
	// code and message are the API 3.0 answer; an empty message means the
	// error's own text, without its "kms: " prefix.
	code, message string
	// legacyCode and legacyMessage are the legacy answer.
	legacyCode    int
	legacyMessage string
	// aws is the AWS KMS API's __type (its message is message); its HTTP
	// status is awsStatus(aws).
	aws string
	// level, when above slog.LevelInfo, logs the error with the request id.
	level slog.Level
	// logMessage is what is logged at level.
	logMessage string
}

// noLog is the level of the errors that are the caller's: not logged.
const noLog = slog.LevelInfo

// errorTable is searched in order: the first row with an error that
// errors.Is matches wins (ErrUsageLimit wraps the error that stopped the
// new version; ErrSelfChange wraps ErrUnauthorized).
var errorTable = []errorRow{
	{errs: []error{kms.ErrUsageLimit}, aws: "LimitExceededException", code: "LimitExceeded", message: "the key version reached its usage limit and a new version could not be created; retry later",
		legacyCode: codeOperationFailed, legacyMessage: "key version usage limit reached and a new version could not be created, please retry later",
		level: slog.LevelError, logMessage: "request not served: key version usage limit reached and no new version could be made"},
	{errs: []error{kms.ErrInvalidKeyID}, aws: "NotFoundException", code: "InvalidParameterValue.InvalidKeyId", message: "the KeyId is invalid",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid keyId"},
	{errs: []error{kms.ErrInvalidPendingWindow}, aws: "ValidationException", code: "InvalidParameter.InvalidPendingWindowInDays", message: "the PendingWindowInDays must be 7 to 30",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid pendingWindowInDays: 7 to 30"},
	{errs: []error{kms.ErrInvalidRotateDays}, aws: "ValidationException", code: "InvalidParameterValue", message: "the RotateDays must be 7 to 365",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid rotateDays: 7 to 365"},
	{errs: []error{kms.ErrInvalidNumberOfBytes}, aws: "ValidationException", code: "InvalidParameter", message: "the NumberOfBytes must be 1 to 1024",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid numberOfBytes: 1 to 1024"},
	{errs: []error{kms.ErrInvalidKeySpec}, aws: "ValidationException", code: "InvalidParameter", message: "the KeySpec must be AES_128 or AES_256 (or give NumberOfBytes)",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid keySpec: AES_128 or AES_256, or give numberOfBytes"},
	{errs: []error{kms.ErrTooManyKeys}, aws: "ValidationException", code: "InvalidParameterValue", message: "at most 100 KeyIds are allowed",
		legacyCode: codeInvalidParameter, legacyMessage: "at most 100 keyIds are allowed"},
	{errs: []error{kms.ErrDuplicateKeyID}, aws: "ValidationException", code: "InvalidParameterValue.DuplicatedKeyId", message: "the KeyIds contain a duplicate",
		legacyCode: codeInvalidParameter, legacyMessage: "the keyIds contain a duplicate"},
	{errs: []error{kms.ErrKeyArchived}, aws: "KMSInvalidStateException", code: "ResourceUnavailable.CmkArchived", message: "the CMK is archived",
		legacyCode: codeOperationFailed, legacyMessage: "key is archived"},
	{errs: []error{kms.ErrKeyShouldBeDisabled}, aws: "KMSInvalidStateException", code: "ResourceUnavailable.CmkShouldBeDisabled", message: "only a disabled CMK can be scheduled for deletion",
		legacyCode: codeOperationFailed, legacyMessage: "key must be disabled before it is scheduled for deletion"},
	{errs: []error{kms.ErrKeyNotPendingDelete}, aws: "KMSInvalidStateException", code: "ResourceUnavailable.CmkNotPendingDelete", message: "the CMK is not pending deletion",
		legacyCode: codeOperationFailed, legacyMessage: "key is not pending deletion"},
	{errs: []error{kms.ErrPlaintextTooLong, kms.ErrPlaintextEmpty}, aws: "ValidationException", code: "InvalidParameterValue.InvalidPlaintext", message: "the Plaintext must be 1 to 4096 bytes once base64-decoded",
		legacyCode: codeEncryptFailed, legacyMessage: "(10660)encryption failed, please check input parameters"},
	{errs: []error{kms.ErrInvalidContext}, aws: "ValidationException", code: "InvalidParameterValue", message: "the EncryptionContext must be a JSON object of strings, at most 1024 characters, without duplicate keys",
		legacyCode: codeIllegalContext, legacyMessage: "(10640)illegal encryptionContext"},
	{errs: []error{kms.ErrInvalidCiphertext}, aws: "InvalidCiphertextException", code: "InvalidParameterValue.InvalidCiphertext", message: "the CiphertextBlob is invalid",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid ciphertextBlob"},
	{errs: []error{kms.ErrInvalidAlias}, aws: "InvalidAliasNameException", code: "InvalidParameterValue.InvalidAlias", message: "the Alias must be 1-60 characters of A-Z a-z 0-9 _ -, start with a letter or digit, and not start with kms-",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid alias: 1-60 characters of A-Z a-z 0-9 _ -, starting with a letter or digit, not starting with kms-"},
	{errs: []error{kms.ErrInvalidKeyUsage}, aws: "InvalidKeyUsageException", code: "InvalidParameterValue.InvalidKeyUsage", message: "the KeyUsage is not valid, or the key's KeyUsage does not allow this operation",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid keyUsage: only ENCRYPT/DECRYPT is supported"},
	// Asymmetric keys (kms/asym.go).
	{errs: []error{kms.ErrUnsupported}, aws: "UnsupportedOperationException", code: "UnsupportedOperation",
		legacyCode: codeInvalidParameter},
	{errs: []error{kms.ErrRotateNotSupported}, aws: "UnsupportedOperationException", code: "UnsupportedOperation.RotateNotSupported", message: "rotation is not supported for this CMK (asymmetric, or imported key material)",
		legacyCode: codeOperationFailed, legacyMessage: "rotation is not supported for this key"},
	{errs: []error{kms.ErrInvalidAlgorithm, kms.ErrInvalidMessage}, aws: "ValidationException", code: "InvalidParameterValue",
		legacyCode: codeInvalidParameter},
	{errs: []error{kms.ErrAsymDecrypt}, aws: "InvalidCiphertextException", code: "FailedOperation.DecryptError", message: "decryption failed",
		legacyCode: codeOperationFailed, legacyMessage: "decryption failed"},
	{errs: []error{kms.ErrInvalidDesc}, aws: "ValidationException", code: "InvalidParameterValue", message: "the Description must be at most 1024 bytes of UTF-8",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid description: at most 1024 bytes of UTF-8"},
	{errs: []error{kms.ErrKeyHasAlias}, aws: "LimitExceededException", code: "UnsupportedOperation", message: "the key already has an alias, and a key has one alias only: delete it (DeleteAlias) or move it (UpdateAlias) first",
		legacyCode: codeOperationFailed, legacyMessage: "the key already has an alias"},
	{errs: []error{kms.ErrAliasExists}, aws: "AlreadyExistsException", code: "InvalidParameterValue.AliasAlreadyExists", message: "the Alias already exists",
		legacyCode: codeOperationFailed, legacyMessage: "alias already exists"},
	{errs: []error{kms.ErrSelfChange, kms.ErrExceedsCaller}, aws: "AccessDeniedException", code: "UnauthorizedOperation",
		legacyCode: codeUnauthorized},
	{errs: []error{kms.ErrUnauthorized}, aws: "AccessDeniedException", code: "UnauthorizedOperation", message: "the credential is not authorized for this operation on this resource",
		legacyCode: codeUnauthorized, legacyMessage: "not authorized for this operation on this resource"},
	{errs: []error{kms.ErrCredentialNotFound}, aws: "NotFoundException", code: "ResourceNotFound", message: "the credential does not exist",
		legacyCode: codeNotFound, legacyMessage: "credential does not exist"},
	{errs: []error{kms.ErrCredentialExists}, aws: "AlreadyExistsException", code: "ResourceInUse", message: "the SecretId already exists",
		legacyCode: codeOperationFailed, legacyMessage: "secretId already exists"},
	{errs: []error{kms.ErrInvalidCredential, kms.ErrInvalidPolicy}, aws: "ValidationException", code: "InvalidParameterValue",
		legacyCode: codeInvalidParameter},
	{errs: []error{kms.ErrKeyStateNotSupported}, aws: "KMSInvalidStateException", code: "ResourceUnavailable.CmkStateNotSupport", message: "the CMK's state does not allow this operation",
		legacyCode: codeOperationFailed, legacyMessage: "the key's state does not allow this operation"},
	{errs: []error{kms.ErrKeyNotFound}, aws: "NotFoundException", code: "ResourceUnavailable.CmkNotFound", message: "the CMK does not exist",
		legacyCode: codeNotFound, legacyMessage: "key does not exist"},
	{errs: []error{kms.ErrKeyDisabled}, aws: "DisabledException", code: "ResourceUnavailable.CmkDisabled", message: "the CMK is disabled",
		legacyCode: codeOperationFailed, legacyMessage: "key is disabled"},
	{errs: []error{kms.ErrLimitExceeded}, aws: "LimitExceededException", code: "LimitExceeded.CmkLimitExceeded", message: "the CMK limit is reached",
		legacyCode: codeOperationFailed, legacyMessage: "key limit exceeded"},
	{errs: []error{kms.ErrDecrypt}, aws: "InvalidCiphertextException", code: "FailedOperation.DecryptError", message: "decryption failed: the CiphertextBlob is not authentic or the EncryptionContext differs",
		legacyCode: codeOperationFailed, legacyMessage: "decryption failed: the ciphertextBlob is not authentic or the encryptionContext differs"},
	{errs: []error{kms.ErrBusy, context.DeadlineExceeded}, aws: "ThrottlingException", code: "RequestLimitExceeded", message: "the HSM is busy, please retry",
		legacyCode: codeUnavailable, legacyMessage: "service temporarily unavailable, please retry",
		level: slog.LevelWarn, logMessage: "request not served"},
	{errs: []error{kms.ErrUnavailable}, aws: "DependencyTimeoutException", code: "UnsupportedOperation.ServiceTemporaryUnavailable", message: "the service is temporarily unavailable, please retry",
		legacyCode: codeUnavailable, legacyMessage: "service temporarily unavailable, please retry",
		level: slog.LevelWarn, logMessage: "request not served"},

	// Imported key material (kms/import.go).
	{errs: []error{kms.ErrInvalidType}, aws: "ValidationException", code: "InvalidParameterValue.InvalidType", message: "the Type must be 1 (created by KMS) or 2 (EXTERNAL: imported material)",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid type"},
	{errs: []error{kms.ErrNotExternalKey}, aws: "UnsupportedOperationException", code: "UnsupportedOperation.NotExternalCmk", message: "only an EXTERNAL CMK (created with Type 2) takes imported key material",
		legacyCode: codeOperationFailed, legacyMessage: "the key's origin is not EXTERNAL"},
	{errs: []error{kms.ErrExternalCannotRotate}, aws: "UnsupportedOperationException", code: "UnsupportedOperation.ExternalCmkCanNotRotate", message: "a CMK with imported key material cannot rotate",
		legacyCode: codeOperationFailed, legacyMessage: "a key with imported material cannot rotate"},
	{errs: []error{kms.ErrInvalidWrapping}, aws: "ValidationException", code: "InvalidParameter",
		legacyCode: codeInvalidParameter},
	{errs: []error{kms.ErrWrappingUnsupported}, aws: "UnsupportedOperationException", code: "UnsupportedOperation",
		legacyCode: codeOperationFailed},
	{errs: []error{kms.ErrImportTokenExpired}, aws: "ExpiredImportTokenException", code: "ResourceUnavailable.TokenExpired", message: "the ImportToken has expired; call GetParametersForImport again",
		legacyCode: codeOperationFailed, legacyMessage: "the import token has expired"},
	{errs: []error{kms.ErrImportTokenInvalid}, aws: "InvalidImportTokenException", code: "InvalidParameter", message: "the ImportToken is not valid for this CMK (unknown, already used, or issued for another CMK)",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid import token"},
	{errs: []error{kms.ErrDecryptMaterial}, aws: "InvalidCiphertextException", code: "InvalidParameter.DecryptMaterialError", message: "the EncryptedKeyMaterial does not decrypt under the wrapping key of the ImportToken to a 256-bit key",
		legacyCode: codeInvalidParameter, legacyMessage: "the encrypted key material cannot be decrypted"},
	{errs: []error{kms.ErrMaterialNotMatch}, aws: "IncorrectKeyMaterialException", code: "InvalidParameterValue.MaterialNotMatch", message: "the key material differs from the material imported into this CMK before",
		legacyCode: codeInvalidParameter, legacyMessage: "the key material differs from the material imported before"},
	{errs: []error{kms.ErrInvalidValidTo}, aws: "ValidationException", code: "InvalidParameter", message: "the ValidTo must be 0 (never) or a future Unix time of at most 2147443200",
		legacyCode: codeInvalidParameter, legacyMessage: "invalid validTo"},
	{errs: []error{kms.ErrTooManyImportParameters}, aws: "LimitExceededException", code: "LimitExceeded", message: "too many unused import parameters for this CMK; use them or let them expire (24 h)",
		legacyCode: codeOperationFailed, legacyMessage: "too many unused import parameters"},
}

// internalErrorRow answers any error no row matches: logged, never
// detailed (the message names the request id, filled in by wireError).
var internalErrorRow = errorRow{code: "InternalError", aws: "KMSInternalException", legacyCode: codeInternal, level: slog.LevelError, logMessage: "internal error"}

// domainErrorRow returns the row of a domain error.
func domainErrorRow(err error) *errorRow {
	for i := range errorTable {
		for _, e := range errorTable[i].errs {
			if errors.Is(err, e) {
				return &errorTable[i]
			}
		}
	}
	return &internalErrorRow
}

// errAuditUnavailable fails a request whose audit line cannot be written.
var errAuditUnavailable = errors.New("the audit trail is unavailable; the request was not served")

// wireError is an error as every protocol answers it.
type wireError struct {
	code       string // API 3.0
	message    string
	legacyCode int
	legacyMsg  string
	awsType    string // AWS KMS API
	awsMessage string
}

// toWireError maps err to its answer in both protocols: the edge's own
// errors (*apiError, *legacyError, *authError, *paramError) carry their
// codes; domain errors take their row of errorTable, logged at the row's
// level with the request id rid.
func (s *Server) toWireError(err error, rid string) wireError {
	if typ, msg, ok := awsWireError(err); ok && err != errAuditUnavailable {
		var aw *awsError
		if errors.As(err, &aw) { // the AWS API's own: answered by no other protocol
			return wireError{code: "InvalidParameter", message: aw.message, legacyCode: codeInvalidParameter, legacyMsg: aw.message, awsType: typ, awsMessage: msg}
		}
		w := s.toWireErrorTencent(err, rid)
		w.awsType, w.awsMessage = typ, msg
		return w
	}
	w := s.toWireErrorTencent(err, rid)
	if w.awsType == "" {
		w.awsType, w.awsMessage = "KMSInternalException", w.message
	}
	return w
}

// toWireErrorTencent is toWireError for the Tencent protocols, with the
// AWS column of domain errors.
func (s *Server) toWireErrorTencent(err error, rid string) wireError {
	var ae *apiError
	var le *legacyError
	var au *authError
	switch {
	case err == errAuditUnavailable:
		return wireError{code: "InternalError", message: err.Error() + " (RequestId " + rid + ")", legacyCode: codeInternal, legacyMsg: err.Error()}
	case errors.As(err, &au):
		return wireError{code: au.api3, message: au.message, legacyCode: au.legacy, legacyMsg: au.message}
	case errors.As(err, &ae):
		return wireError{code: ae.Code, message: ae.Message, legacyCode: codeInvalidParameter, legacyMsg: ae.Message}
	case errors.As(err, &le):
		return wireError{code: "InvalidParameter", message: le.message, legacyCode: le.code, legacyMsg: le.message}
	}
	var te *kms.TagError
	if errors.As(err, &te) {
		return wireError{code: te.Code, message: te.Msg, legacyCode: codeInvalidParameter, legacyMsg: te.Msg}
	}
	if pe, ok := isParamError(err); ok {
		return wireError{code: pe.code, message: pe.message, legacyCode: codeInvalidParameter, legacyMsg: pe.message}
	}
	row := domainErrorRow(err)
	if row.level > noLog {
		s.log.Log(context.Background(), row.level, row.logMessage, "requestId", rid, "err", err)
	}
	w := wireError{code: row.code, message: row.message, legacyCode: row.legacyCode, legacyMsg: row.legacyMessage, awsType: row.aws}
	switch {
	case row == &internalErrorRow:
		w.message = "internal error (RequestId " + rid + ")"
		w.legacyMsg = "internal error (requestId " + rid + ")"
	case row.message == "":
		w.message = strings.TrimPrefix(err.Error(), "kms: ")
		w.legacyMsg = w.message
	}
	w.awsMessage = w.message
	return w
}
