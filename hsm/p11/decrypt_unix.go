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

// CK_FUNCTION_LIST is a CK_VERSION (two bytes) followed by function
// pointers in the order of pkcs11f.h; C_Decrypt is the 35th (index 34).
struct p11_function_list {
	unsigned char major, minor;
	void *fn[35];
};

static void *p11_open(const char *path) { return dlopen(path, RTLD_LAZY | RTLD_LOCAL); }
static void p11_close(void *h) { if (h) dlclose(h); }

static void *p11_decrypt_fn(void *h) {
	p11_get_function_list gfl = (p11_get_function_list)dlsym(h, "C_GetFunctionList");
	void *list = NULL;
	if (gfl == NULL || gfl(&list) != 0 || list == NULL) return NULL;
	return ((struct p11_function_list *)list)->fn[34];
}

static void *p11_sym(void *h, const char *name) { return dlsym(h, name); }

static p11_ulong p11_call_decrypt(void *fn, p11_ulong s, unsigned char *in, p11_ulong inlen, unsigned char *out, p11_ulong *outlen) {
	return ((p11_decrypt)fn)(s, in, inlen, out, outlen);
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directDecrypt calls the module's C_Decrypt with a Go-allocated output
// buffer. miekg/pkcs11's Ctx.Decrypt (v1.1.2) leaks its C output buffer
// whenever the second C_Decrypt call fails, i.e. on every tampered
// ciphertext: an attacker could grow the C heap by the ciphertext size per
// request. One call into the module also saves the length query and a copy.
type directDecrypt struct {
	lib unsafe.Pointer // our own dlopen reference to the module
	fn  unsafe.Pointer // its C_Decrypt
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
	fn := C.p11_decrypt_fn(lib)
	if fn == nil {
		C.p11_close(lib)
		return nil
	}
	return &directDecrypt{lib: lib, fn: fn}
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

// decrypt runs C_Decrypt on an operation initialised by C_DecryptInit and
// returns the plaintext, which is at most len(in) bytes and usually
// exactly hint bytes. Errors are pkcs11.Error, like the binding's.
func (d *directDecrypt) decrypt(s pkcs11.SessionHandle, in []byte, hint int) ([]byte, error) {
	var inp *C.uchar
	if len(in) > 0 {
		inp = (*C.uchar)(unsafe.Pointer(&in[0]))
	}
	// The output pointer must not be NULL (that asks for the length), even
	// for an empty plaintext.
	out := make([]byte, max(hint, 1))
	for retried := false; ; retried = true {
		outlen := C.p11_ulong(hint)
		rv := C.p11_call_decrypt(d.fn, C.p11_ulong(s), inp, C.p11_ulong(len(in)),
			(*C.uchar)(unsafe.Pointer(&out[0])), &outlen)
		switch {
		case rv == 0 && int(outlen) <= hint:
			return out[:outlen], nil
		case rv == pkcs11.CKR_BUFFER_TOO_SMALL && !retried && int(outlen) > hint && int(outlen) <= len(in)+1:
			// The operation stays active; retry once with the size asked for.
			hint = int(outlen)
			out = make([]byte, hint)
			continue
		case rv == 0:
			return nil, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
		default:
			return nil, pkcs11.Error(rv)
		}
	}
}
