package httpapi

import (
	"context"

	"hsmkms/kms"
)

// The test double of the domain refuses key import like every other call.
var _ KeyImporter = (*fakeKMS)(nil)

func (f *fakeKMS) GetParametersForImport(context.Context, string, string, string) (kms.ImportParameters, error) {
	return kms.ImportParameters{}, f.err
}

func (f *fakeKMS) ImportKeyMaterial(context.Context, kms.ImportKeyMaterialInput) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, f.err
}

func (f *fakeKMS) DeleteImportedKeyMaterial(context.Context, string) (kms.KeyMetadata, error) {
	return kms.KeyMetadata{}, f.err
}
