package p11

/*
#include <stdlib.h>
*/
import "C"

import (
	"unsafe"

	"github.com/miekg/pkcs11"
)

// initArgs is Config.InitArgs as a C string that lives as long as the
// Token: C_Initialize receives it as CK_C_INITIALIZE_ARGS.pReserved, and a
// module may keep the pointer (the PKCS#11 standard says nothing about its
// lifetime).
type initArgs struct{ p unsafe.Pointer }

func newInitArgs(s string) *initArgs {
	if s == "" {
		return nil
	}
	return &initArgs{p: unsafe.Pointer(C.CString(s))}
}

// initialize calls C_Initialize (CKF_OS_LOCKING_OK) with the arguments, if any.
func (a *initArgs) initialize(mod *pkcs11.Ctx) error {
	if a == nil {
		return mod.Initialize()
	}
	return mod.Initialize(pkcs11.InitializeWithReserved(a.p))
}

// free releases the C string; call it only after C_Finalize.
func (a *initArgs) free() {
	if a != nil && a.p != nil {
		C.free(a.p)
		a.p = nil
	}
}
