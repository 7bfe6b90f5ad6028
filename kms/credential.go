package kms

import "errors"

// Credential errors.
var (
	// ErrCredentialNotFound means no enabled credential has that SecretId.
	ErrCredentialNotFound = errors.New("kms: credential not found or disabled")
	// ErrInvalidCredential means a credential's name or secret is malformed.
	ErrInvalidCredential = errors.New("kms: invalid credential")
)

// Credential is an API credential as the HTTP edge needs it to verify a
// signature: the SecretKey is symmetric, so the verifier must know it.
type Credential struct {
	SecretID  string
	SecretKey string
	Principal *Principal
}
