//go:build unix

package p11

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

// Just enough of the PKCS#11 ABI (Unix: CK_ULONG is unsigned long) to call
// the module's AES-GCM functions through its function list.
typedef unsigned long p11_ulong;

// CK_GCM_PARAMS as SoftHSM2 and miekg/pkcs11 lay it out (v2.40 errata, with
// ulIvBits); CK_MECHANISM.
struct p11_gcm_params {
	unsigned char *pIv;
	p11_ulong ulIvLen;
	p11_ulong ulIvBits;
	unsigned char *pAAD;
	p11_ulong ulAADLen;
	p11_ulong ulTagBits;
};
struct p11_mechanism {
	p11_ulong mechanism;
	void *pParameter;
	p11_ulong ulParameterLen;
};
typedef p11_ulong (*p11_get_function_list)(void **);
typedef p11_ulong (*p11_init)(p11_ulong, struct p11_mechanism *, p11_ulong);
typedef p11_ulong (*p11_crypt)(p11_ulong, unsigned char *, p11_ulong, unsigned char *, p11_ulong *);

// CK_FUNCTION_LIST is a CK_VERSION (two bytes) followed by function
// pointers in the order of pkcs11f.h: C_EncryptInit is index 29, C_Encrypt
// 30, C_DecryptInit 33, C_Decrypt 34.
struct p11_function_list {
	unsigned char major, minor;
	void *fn[35];
};

static void *p11_open(const char *path) { return dlopen(path, RTLD_LAZY | RTLD_LOCAL); }
static void p11_close(void *h) { if (h) dlclose(h); }
static void *p11_sym(void *h, const char *name) { return dlsym(h, name); }

// p11_fns fills fns with C_EncryptInit, C_Encrypt, C_DecryptInit and
// C_Decrypt of the module's function list; 0 if any is missing.
static int p11_fns(void *h, void **fns) {
	p11_get_function_list gfl = (p11_get_function_list)dlsym(h, "C_GetFunctionList");
	void *list = NULL;
	if (gfl == NULL || gfl(&list) != 0 || list == NULL) return 0;
	struct p11_function_list *l = (struct p11_function_list *)list;
	fns[0] = l->fn[29]; fns[1] = l->fn[30]; fns[2] = l->fn[33]; fns[3] = l->fn[34];
	return fns[0] && fns[1] && fns[2] && fns[3];
}

// p11_gcm runs C_xInit(CKM_AES_GCM, params) and then C_x on session s with
// key k, in one call from Go, with outcap bytes of room at out. It returns
// the return value, the output length and the stage that failed (1 init, 2
// operation) by value, so that no Go variable's address crosses into C
// (which would move it to the heap). The parameters live on this stack
// frame: nothing to free.
struct p11_result { p11_ulong rv; p11_ulong outlen; int stage; };
static struct p11_result p11_gcm(void *initfn, void *cryptfn, p11_ulong s, p11_ulong k,
		unsigned char *iv, p11_ulong ivlen, unsigned char *aad, p11_ulong aadlen, p11_ulong tagbits,
		unsigned char *in, p11_ulong inlen, unsigned char *out, p11_ulong outcap) {
	struct p11_gcm_params p = { iv, ivlen, ivlen * 8, aad, aadlen, tagbits };
	struct p11_mechanism m = { 0x1087, &p, sizeof p }; // CKM_AES_GCM
	struct p11_result r = { 0, outcap, 1 };
	r.rv = ((p11_init)initfn)(s, &m, k);
	if (r.rv != 0) return r;
	r.stage = 2;
	r.rv = ((p11_crypt)cryptfn)(s, in, inlen, out, &r.outlen);
	return r;
}

// p11_crypt_once runs C_Encrypt or C_Decrypt (cryptfn) once on an operation
// the binding initialised, with outcap bytes of room at out.
static struct p11_result p11_crypt_once(void *cryptfn, p11_ulong s,
		unsigned char *in, p11_ulong inlen, unsigned char *out, p11_ulong outcap) {
	struct p11_result r = { 0, outcap, 2 };
	r.rv = ((p11_crypt)cryptfn)(s, in, inlen, out, &r.outlen);
	return r;
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directP11 is this package's one cgo shim: it calls the module's
// C_EncryptInit, C_Encrypt, C_DecryptInit and C_Decrypt itself, through
// the module's function list (C_GetFunctionList: NSS softoken exports
// nothing else), with Go-allocated output buffers sized exactly. Everything
// else goes through github.com/miekg/pkcs11.
//
// Why not the binding for Seal and Open:
//
//   - It leaks. miekg/pkcs11's Ctx.Decrypt (v1.1.2, and upstream master as
//     of this writing) calls its C helper Decrypt, which asks the module
//     for the length (C_Decrypt with a NULL output), callocs that many
//     bytes into *plain and calls C_Decrypt again. When that second call
//     fails, the helper returns the error with *plain still allocated, and
//     Ctx.Decrypt returns toError(e) before its C.free(plain): the buffer,
//     as large as the ciphertext, is never freed. A failed C_Decrypt is
//     what every tampered or mis-keyed ciphertext causes, so one client
//     sending bad ciphertexts could grow kmsd's C heap by up to 64 MiB a
//     request. Ctx.Encrypt, EncryptUpdate and DecryptUpdate have the same
//     shape (and Sign, Digest and the other two-call wrappers free only
//     on success). The upstream fix is one line per C helper, in
//     pkcs11.go's preamble:
//
//     e = c->sym->C_Decrypt(session, cipher, clen, *plain, plainlen);
//     if (e != CKR_OK) { free(*plain); *plain = NULL; }
//     return e;
//
//     (or, on the Go side, C.free(unsafe.Pointer(plain)) before returning
//     the error: free(NULL) is a no-op). OPERATIONS.md has the write-up.
//
//   - It asks for the length first, which NSS softoken answers wrongly for
//     AES-GCM encryption (the plaintext length; the C_Encrypt that follows
//     fails with CKR_BUFFER_TOO_SMALL and ends the operation): outputs here
//     are sized exactly and C_Encrypt/C_Decrypt called once.
//
//   - It costs three cgo calls (init, length query, operation), a malloc'ed
//     parameter block and a C output buffer copied back; gcm does init and
//     operation in one cgo call with CK_GCM_PARAMS on the C stack, and
//     every cgo call that blocks in the module costs the Go scheduler a
//     thread hand-off.
//
// gcm is the path of Seal and Open; encrypt and decrypt run the single
// operation after the binding's C_EncryptInit/C_DecryptInit (the path the
// tests take with Config.noDirectGCM, to check that both agree). In
// HSM-generated IV mode the token writes its IV through pIv straight into
// the caller's Go slice. loadDirect returns nil
// if the module's function list cannot be read; Seal and Open then use
// the binding (leak included). A directP11 is safe for concurrent use:
// its calls carry the session they act on.
type directP11 struct {
	lib unsafe.Pointer    // our own dlopen reference to the module
	fns [4]unsafe.Pointer // C_EncryptInit, C_Encrypt, C_DecryptInit, C_Decrypt
}

func loadDirect(path string) *directP11 {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	lib := C.p11_open(cpath)
	if lib == nil {
		return nil
	}
	d := &directP11{lib: lib}
	if C.p11_fns(lib, (*unsafe.Pointer)(unsafe.Pointer(&d.fns[0]))) == 0 {
		C.p11_close(lib)
		return nil
	}
	return d
}

func (d *directP11) close() {
	if d != nil {
		C.p11_close(d.lib)
	}
}

// symbol returns dlsym(name) of the module, for tests.
func (d *directP11) symbol(name string) unsafe.Pointer {
	cname := C.CString(name)
	defer C.free(unsafe.Pointer(cname))
	return C.p11_sym(d.lib, cname)
}

// decryptFn is the module's C_Decrypt, for tests.
func (d *directP11) decryptFn() unsafe.Pointer { return d.fns[3] }

// gcm performs C_xInit(CKM_AES_GCM) and C_x in one cgo call; out must have
// room for the whole result. It returns the output length, the failing
// stage (1 init, 2 operation) and the return value (0 on success).
func (d *directP11) gcm(decrypt bool, s pkcs11.SessionHandle, k pkcs11.ObjectHandle, iv, aad, in, out []byte) (n int, stage int, rv uint) {
	initfn, fn := d.fns[0], d.fns[1]
	if decrypt {
		initfn, fn = d.fns[2], d.fns[3]
	}
	r := C.p11_gcm(initfn, fn, C.p11_ulong(s), C.p11_ulong(k),
		ptr(iv), C.p11_ulong(len(iv)), ptr(aad), C.p11_ulong(len(aad)), C.p11_ulong(tagBits),
		inPtr(in), C.p11_ulong(len(in)), outPtr(out), C.p11_ulong(len(out)))
	return int(r.outlen), int(r.stage), uint(r.rv)
}

// decrypt runs C_Decrypt on an operation initialised by C_DecryptInit, with
// room bytes of output, and returns the plaintext. It calls C_Decrypt once:
// after CKR_BUFFER_TOO_SMALL some modules have ended the operation and
// others have not, so the caller sizes room for the module's needs (for
// GCM: the ciphertext length) and replaces the session on that error.
// Errors are pkcs11.Error, like the binding's.
func (d *directP11) decrypt(s pkcs11.SessionHandle, in []byte, room int) ([]byte, error) {
	out := make([]byte, room)
	r := C.p11_crypt_once(d.fns[3], C.p11_ulong(s), inPtr(in), C.p11_ulong(len(in)), outPtr(out), C.p11_ulong(room))
	switch {
	case r.rv != 0:
		return nil, pkcs11.Error(r.rv)
	case int(r.outlen) > room:
		return nil, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	}
	return out[:r.outlen], nil
}

// encrypt runs C_Encrypt on an operation initialised by C_EncryptInit into
// out (exactly sized by the caller) and returns the length written, once:
// see decrypt.
func (d *directP11) encrypt(s pkcs11.SessionHandle, in, out []byte) (int, error) {
	r := C.p11_crypt_once(d.fns[1], C.p11_ulong(s), inPtr(in), C.p11_ulong(len(in)), outPtr(out), C.p11_ulong(len(out)))
	switch {
	case r.rv != 0:
		return 0, pkcs11.Error(r.rv)
	case int(r.outlen) > len(out):
		return 0, pkcs11.Error(pkcs11.CKR_GENERAL_ERROR)
	}
	return int(r.outlen), nil
}

// ptr is b's data, or NULL for no bytes (IV, AAD).
func ptr(b []byte) *C.uchar {
	if len(b) == 0 {
		return nil
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

// Neither data pointer of C_Encrypt/C_Decrypt may be NULL, even for zero
// bytes: a NULL output asks for the length, and SoftHSM2 refuses a NULL
// input. Zero-length buffers point into directEmpty, which nothing writes
// (no room is given).
var directEmpty [2]byte

func outPtr(b []byte) *C.uchar {
	if len(b) == 0 {
		return (*C.uchar)(unsafe.Pointer(&directEmpty[0]))
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

func inPtr(b []byte) *C.uchar {
	if len(b) == 0 {
		return (*C.uchar)(unsafe.Pointer(&directEmpty[1]))
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}
