//go:build !unix

package p11

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directP11 is unavailable off Unix; Seal and Open use the binding, whose
// Decrypt leaks its C buffer when C_Decrypt fails (see direct_unix.go).
type directP11 struct{}

func loadDirect(string) *directP11                { return nil }
func (d *directP11) close()                       {}
func (d *directP11) symbol(string) unsafe.Pointer { return nil }
func (d *directP11) decryptFn() unsafe.Pointer    { return nil }
func (d *directP11) gcm(bool, pkcs11.SessionHandle, pkcs11.ObjectHandle, []byte, []byte, []byte, []byte) (int, int, uint) {
	panic("p11: directP11 unavailable")
}
func (d *directP11) decrypt(pkcs11.SessionHandle, []byte, int) ([]byte, error) {
	panic("p11: directP11 unavailable")
}
func (d *directP11) encrypt(pkcs11.SessionHandle, []byte, []byte) (int, error) {
	panic("p11: directP11 unavailable")
}
