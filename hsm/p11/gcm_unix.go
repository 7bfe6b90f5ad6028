//go:build unix

package p11

/*
#cgo linux LDFLAGS: -ldl
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

typedef unsigned long gcm_ulong;

// CK_GCM_PARAMS as SoftHSM2 and miekg/pkcs11 lay it out (v2.40 errata, with
// ulIvBits); CK_MECHANISM.
struct gcm_params {
	unsigned char *pIv;
	gcm_ulong ulIvLen;
	gcm_ulong ulIvBits;
	unsigned char *pAAD;
	gcm_ulong ulAADLen;
	gcm_ulong ulTagBits;
};
struct gcm_mechanism {
	gcm_ulong mechanism;
	void *pParameter;
	gcm_ulong ulParameterLen;
};
typedef gcm_ulong (*gcm_get_function_list)(void **);
typedef gcm_ulong (*gcm_init)(gcm_ulong, struct gcm_mechanism *, gcm_ulong);
typedef gcm_ulong (*gcm_crypt)(gcm_ulong, unsigned char *, gcm_ulong, unsigned char *, gcm_ulong *);

struct gcm_function_list {
	unsigned char major, minor;
	void *fn[35];
};

static void *gcm_open(const char *path) { return dlopen(path, RTLD_LAZY | RTLD_LOCAL); }
static void gcm_close(void *h) { if (h) dlclose(h); }

// gcm_fns fills fns with C_EncryptInit (29), C_Encrypt (30),
// C_DecryptInit (33) and C_Decrypt (34) of the module's function list.
static int gcm_fns(void *h, void **fns) {
	gcm_get_function_list gfl = (gcm_get_function_list)dlsym(h, "C_GetFunctionList");
	void *list = NULL;
	if (gfl == NULL || gfl(&list) != 0 || list == NULL) return 0;
	struct gcm_function_list *l = (struct gcm_function_list *)list;
	fns[0] = l->fn[29]; fns[1] = l->fn[30]; fns[2] = l->fn[33]; fns[3] = l->fn[34];
	return fns[0] && fns[1] && fns[2] && fns[3];
}

// gcm_run runs C_xInit(CKM_AES_GCM, params) and then C_x on session s with
// key k, in one call from Go, with outcap bytes of room at out. It returns
// the return value, the output length and the stage that failed (1 init, 2
// operation) by value, so that no Go variable's address crosses into C
// (which would move it to the heap). The parameters live on this stack
// frame: nothing to free.
struct gcm_result { gcm_ulong rv; gcm_ulong outlen; int stage; };
static struct gcm_result gcm_run(void *initfn, void *cryptfn, gcm_ulong s, gcm_ulong k,
		unsigned char *iv, gcm_ulong ivlen, unsigned char *aad, gcm_ulong aadlen, gcm_ulong tagbits,
		unsigned char *in, gcm_ulong inlen, unsigned char *out, gcm_ulong outcap) {
	struct gcm_params p = { iv, ivlen, ivlen * 8, aad, aadlen, tagbits };
	struct gcm_mechanism m = { 0x1087, &p, sizeof p }; // CKM_AES_GCM
	struct gcm_result r = { 0, outcap, 1 };
	r.rv = ((gcm_init)initfn)(s, &m, k);
	if (r.rv != 0) return r;
	r.stage = 2;
	r.rv = ((gcm_crypt)cryptfn)(s, in, inlen, out, &r.outlen);
	return r;
}
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// directGCM runs a whole AES-GCM encryption or decryption (init and
// single-part operation) in one cgo call through the module's function
// list, with CK_GCM_PARAMS on the C stack and Go-allocated buffers. Through
// the binding the same work takes three cgo calls (init, a length query,
// the operation), a malloc'ed parameter block and a C output buffer copied
// back; every cgo call that blocks in the module costs the Go scheduler a
// thread hand-off. The C_Decrypt leak of the binding (decrypt_unix.go) is
// avoided as well.
type directGCM struct {
	lib unsafe.Pointer
	fns [4]unsafe.Pointer // EncryptInit, Encrypt, DecryptInit, Decrypt
}

func loadDirectGCM(path string) *directGCM {
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	lib := C.gcm_open(cpath)
	if lib == nil {
		return nil
	}
	d := &directGCM{lib: lib}
	if C.gcm_fns(lib, (*unsafe.Pointer)(unsafe.Pointer(&d.fns[0]))) == 0 {
		C.gcm_close(lib)
		return nil
	}
	return d
}

func (d *directGCM) close() {
	if d != nil {
		C.gcm_close(d.lib)
	}
}

func ptr(b []byte) *C.uchar {
	if len(b) == 0 {
		return nil
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

// run performs init+operation; out must have room for the whole result. It
// returns the output length, the failing stage (1 init, 2 operation) and
// the return value (0 on success).
func (d *directGCM) run(decrypt bool, s pkcs11.SessionHandle, k pkcs11.ObjectHandle, iv, aad, in, out []byte) (n int, stage int, rv uint) {
	initfn, fn := d.fns[0], d.fns[1]
	if decrypt {
		initfn, fn = d.fns[2], d.fns[3]
	}
	// Neither data pointer may be NULL, even for zero bytes (a NULL output
	// asks for the length; SoftHSM2 refuses a NULL input). Zero-length
	// buffers point at gcmEmpty, which nothing writes (no room).
	op := ptr(out)
	if op == nil {
		op = (*C.uchar)(unsafe.Pointer(&gcmEmpty[0]))
	}
	ip := ptr(in)
	if ip == nil {
		ip = (*C.uchar)(unsafe.Pointer(&gcmEmpty[1]))
	}
	r := C.gcm_run(initfn, fn, C.gcm_ulong(s), C.gcm_ulong(k),
		ptr(iv), C.gcm_ulong(len(iv)), ptr(aad), C.gcm_ulong(len(aad)), C.gcm_ulong(tagBits),
		ip, C.gcm_ulong(len(in)), op, C.gcm_ulong(len(out)))
	return int(r.outlen), int(r.stage), uint(r.rv)
}

// gcmEmpty backs the pointers of zero-length buffers.
var gcmEmpty [2]byte
