//go:build unix

package p11

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

// Just enough of the PKCS#11 ABI (Unix: CK_ULONG is unsigned long) to call
// C_Decrypt through the module's function list.
typedef unsigned long p11_ulong;
typedef p11_ulong (*p11_get_function_list)(void **);
typedef p11_ulong (*p11_decrypt)(p11_ulong, unsigned char *, p11_ulong, unsigned char *, p11_ulong *);
typedef p11_ulong (*p11_encrypt)(p11_ulong, unsigned char *, p11_ulong, unsigned char *, p11_ulong *);

// CK_FUNCTION_LIST is a CK_VERSION (two bytes) followed by function
// pointers in the order of pkcs11f.h; C_Encrypt is the 31st (index 30),
// C_Decrypt the 35th (index 34).
struct p11_function_list {
	unsigned char major, minor;
	void *fn[35];
};

static void *p11_open(const char *path) { return dlopen(path, RTLD_LAZY | RTLD_LOCAL); }
static void p11_close(void *h) { if (h) dlclose(h); }

static void *p11_fn(void *h, int i) {
	p11_get_function_list gfl = (p11_get_function_list)dlsym(h, "C_GetFunctionList");
	void *list = NULL;
	if (gfl == NULL || gfl(&list) != 0 || list == NULL) return NULL;
	return ((struct p11_function_list *)list)->fn[i];
}

static void *p11_sym(void *h, const char *name) { return dlsym(h, name); }

static p11_ulong p11_call_encrypt(void *fn, p11_ulong s, unsigned char *in, p11_ulong inlen, unsigned char *out, p11_ulong *outlen) {
	return ((p11_encrypt)fn)(s, in, inlen, out, outlen);
}

static p11_ulong p11_call_decrypt(void *fn, p11_ulong s, unsigned char *in, p11_ulong inlen, unsigned char *out, p11_ulong *outlen) {
	return ((p11_decrypt)fn)(s, in, inlen, out, outlen);
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directDecrypt calls the module's C_Decrypt and C_Encrypt with a
// Go-allocated output buffer sized exactly, never a length query (a NULL
// output, which NSS softoken answers wrongly for GCM). miekg/pkcs11's Ctx.Decrypt (v1.1.2) leaks its C output buffer
// whenever the second C_Decrypt call fails, i.e. on every tampered
// ciphertext: an attacker could grow the C heap by the ciphertext size per
// request. One call into the module also saves the length query and a copy.
type directDecrypt struct {
	lib unsafe.Pointer // our own dlopen reference to the module
	fn  unsafe.Pointer // its C_Decrypt
	enc unsafe.Pointer // its C_Encrypt
}

// loadDirectDecrypt resolves C_Decrypt of the module at path through
// C_GetFunctionList. It returns nil if that fails; callers then fall back to
// the binding.
func loadDirectDecrypt(path string) *directDecrypt {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	lib := C.p11_open(cpath)
	if lib == nil {
		return nil
	}
	fn, enc := C.p11_fn(lib, 34), C.p11_fn(lib, 30)
	if fn == nil || enc == nil {
		C.p11_close(lib)
		return nil
	}
	return &directDecrypt{lib: lib, fn: fn, enc: enc}
}

func (d *directDecrypt) close() {
	if d != nil {
		C.p11_close(d.lib)
	}
}

// symbol returns dlsym(name) of the module, for tests.
func (d *directDecrypt) symbol(name string) unsafe.Pointer {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	return C.p11_sym(d.lib, cname)
}

// decrypt runs C_Decrypt on an operation initialised by C_DecryptInit, with
// room bytes of output, and returns the plaintext. It calls C_Decrypt once:
// after CKR_BUFFER_TOO_SMALL some modules have ended the operation and
// others have not, so the caller sizes room for the module's needs (for
// GCM: the ciphertext length) and replaces the session on that error.
// Errors are pkcs11.Error, like the binding's.
func (d *directDecrypt) decrypt(s pkcs11.SessionHandle, in []byte, room int) ([]byte, error) {
	out := make([]byte, max(room, 1)) // never NULL: that asks for the length
	outlen := C.p11_ulong(room)
	rv := C.p11_call_decrypt(d.fn, C.p11_ulong(s), cptr(in), C.p11_ulong(len(in)),
		(*C.uchar)(unsafe.Pointer(&out[0])), &outlen)
	switch {
	case rv != 0:
		return nil, pkcs11.Error(rv)
	case int(outlen) > room:
		return nil, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	}
	return out[:outlen], nil
}

// encrypt runs C_Encrypt on an operation initialised by C_EncryptInit into
// out (exactly sized by the caller) and returns the length written, once:
// see decrypt.
func (d *directDecrypt) encrypt(s pkcs11.SessionHandle, in, out []byte) (int, error) {
	op := cptr(out)
	if op == nil {
		op = (*C.uchar)(unsafe.Pointer(&gcmEmpty[0]))
	}
	outlen := C.p11_ulong(len(out))
	rv := C.p11_call_encrypt(d.enc, C.p11_ulong(s), cptr(in), C.p11_ulong(len(in)), op, &outlen)
	switch {
	case rv != 0:
		return 0, pkcs11.Error(rv)
	case int(outlen) > len(out):
		return 0, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	}
	return int(outlen), nil
}

func cptr(b []byte) *C.uchar {
	if len(b) == 0 {
		return (*C.uchar)(unsafe.Pointer(&gcmEmpty[1])) // SoftHSM2 refuses a NULL input
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}
