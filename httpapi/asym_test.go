package httpapi

import (
	"context"

	"hsmkms/kms"
)

// fakeKMS serves the asymmetric actions by refusing them with f.err, so
// that the edge tests see the domain reached.

func (f *fakeKMS) GetPublicKey(context.Context, string) (kms.PublicKey, error) {
	return kms.PublicKey{}, f.err
}
func (f *fakeKMS) SignByAsymmetricKey(context.Context, kms.SignInput) ([]byte, error) {
	return nil, f.err
}
func (f *fakeKMS) VerifyByAsymmetricKey(context.Context, kms.SignInput) (bool, error) {
	return false, f.err
}
func (f *fakeKMS) AsymmetricRsaDecrypt(context.Context, string, []byte, string) (kms.RSADecryptResult, error) {
	return kms.RSADecryptResult{}, f.err
}
func (f *fakeKMS) ListAlgorithms(context.Context) (kms.Algorithms, error) {
	return kms.Algorithms{}, f.err
}

var _ Asymmetric = (*fakeKMS)(nil)
