//go:build !unix

package p11

import "github.com/miekg/pkcs11"

// directGCM is unavailable off Unix; Seal and Open use the binding.
type directGCM struct{}

func loadDirectGCM(string) *directGCM { return nil }
func (d *directGCM) close()           {}
func (d *directGCM) run(bool, pkcs11.SessionHandle, pkcs11.ObjectHandle, []byte, []byte, []byte, []byte) (int, int, uint) {
	panic("p11: directGCM unavailable")
}
