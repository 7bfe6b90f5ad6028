//go:build !unix

package p11

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directDecrypt is unavailable off Unix; Open uses the binding's Decrypt,
// which leaks its C buffer when C_Decrypt fails (see decrypt_unix.go).
type directDecrypt struct{}

func loadDirectDecrypt(string) *directDecrypt         { return nil }
func (d *directDecrypt) close()                       {}
func (d *directDecrypt) symbol(string) unsafe.Pointer { return nil }
func (d *directDecrypt) decrypt(pkcs11.SessionHandle, []byte, int) ([]byte, error) {
	panic("p11: directDecrypt unavailable")
}
func (d *directDecrypt) encrypt(pkcs11.SessionHandle, []byte, []byte) (int, error) {
	panic("p11: directDecrypt unavailable")
}
