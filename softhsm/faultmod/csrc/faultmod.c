/*
 * faultmod: a fault-injection PKCS#11 v2.40 module for hsmkms tests.
 *
 * It forwards every function of CK_FUNCTION_LIST to a target module
 * (dlopen of $FAULTMOD_TARGET, normally SoftHSM2) and, between the caller
 * and the target, applies faults that a test process switches at run time
 * through a small shared-memory control file ($FAULTMOD_CONTROL), even
 * while another process (kmsd) has this module loaded. The Go package
 * hsmkms/softhsm/faultmod builds this file (Build) and writes the control
 * file (Controller); see faultmod.go there for the API.
 *
 * Build: cc -Wall -Wextra -O2 -fPIC -shared -fvisibility=hidden -pthread \
 *           -Iinclude -o faultmod.so faultmod.c -ldl
 * Optional: -DFAULTMOD_DEFAULT_TARGET='"/usr/lib/softhsm/libsofthsm2.so"'
 * is used when $FAULTMOD_TARGET is not set.
 *
 * ------------------------------------------------------------------------
 * Control file layout, version 1 (native byte order, every field naturally
 * aligned; the Go side (faultmod.go) MUST agree, bump FM_VERSION on any
 * change):
 *
 *   offset size  field
 *   0      8     magic        FM_MAGIC = 0x31304c5254434d46 ("FMCTRL01")
 *   8      4     version      FM_VERSION = 1
 *   12     4     nslots       number of function slots that follow (>= 69)
 *   16     8     session_gen  invalidation generation; InvalidateSessions
 *                             (and RemoveToken(true)) add 1
 *   24     8     removed      1: the token is "removed"
 *   32     8     hsm_iv       1: HSM-generated GCM IV mode
 *   40     8     hide_mech    mechanism type + 1 the module pretends not to
 *                             have (0: none); see step 6a
 *   48     8     reuse        1: session handles are small numbers reused
 *                             as soon as they are closed; see step 5a
 *   56     8     reserved     zero
 *   64     32*nslots slots, indexed by function id (fm_names below):
 *          +0  8 fail_rv      CK_RV to return while fail_count != 0
 *          +8  8 fail_count   int64: 0 off, <0 every call, n>0 the next n
 *                             calls (decremented atomically per failure)
 *          +16 8 delay_ns     added (nanosleep) before every call
 *          +24 8 calls        calls made (incremented by the module)
 *
 * Slot 0 is the wildcard "*": its fail and delay apply to every function
 * except C_Initialize, C_Finalize and C_GetFunctionList, and its calls
 * field counts every call of every function. Slots 1..68 follow the order
 * of CK_FUNCTION_LIST (pkcs11f.h): 1 C_Initialize ... 68 C_WaitForSlotEvent.
 * Both sides use GCC/Go atomics on the mapped words, so a switch is
 * visible to the next call and a call costs a handful of atomic loads.
 *
 * The file is mapped at C_Initialize (again at every C_Initialize, so a
 * process may move to another control file between C_Finalize and
 * C_Initialize) and lazily at C_GetFunctionList. Without $FAULTMOD_CONTROL
 * the module is a plain pass-through. A file with a wrong magic, version or
 * size makes C_Initialize fail with CKR_GENERAL_ERROR (a line on stderr
 * says why).
 *
 * ------------------------------------------------------------------------
 * What a call does, in this order:
 *   1. count it (slot calls and wildcard calls);
 *   2. sleep delay_ns of the function plus that of "*";
 *   3. injected failure (function slot first, then "*"): return fail_rv
 *      without calling the target. Exception, to behave like a token (a
 *      failing C_Encrypt etc. ends the active operation, PKCS#11 5.2): a
 *      failure injected into C_Encrypt/Update/Final, C_Decrypt/Update/Final,
 *      C_Digest/Update/Key/Final, C_Sign/Update/Final or
 *      C_Verify/Update/Final ends the target's active operation of that
 *      kind by calling the target's C_xxxFinal with a scratch buffer (best
 *      effort: it works for every multi-part mechanism, e.g. AES-GCM);
 *   4. token removed:
 *        C_GetSlotList(CK_TRUE, ...)    -> CKR_OK with no slot at all
 *        C_GetSlotInfo                  -> target's answer, CKF_TOKEN_PRESENT cleared
 *        C_GetTokenInfo, C_OpenSession, C_InitToken, C_GetMechanismList,
 *        C_GetMechanismInfo             -> CKR_TOKEN_NOT_PRESENT
 *        every function taking a session handle -> CKR_DEVICE_REMOVED
 *        (C_CloseSession still closes the session in the target)
 *        everything else (C_GetInfo, C_GetSlotList(CK_FALSE),
 *        C_CloseAllSessions, C_WaitForSlotEvent, C_Initialize, C_Finalize)
 *        is forwarded.
 *      RemoveToken(true) also invalidates every open session (the Go side
 *      bumps session_gen), as a real removal closes them all: once the
 *      token is back, old handles give CKR_SESSION_HANDLE_INVALID.
 *   5. invalidated session: a function taking a session handle whose
 *      session was opened (through this module) before the latest
 *      session_gen increment returns CKR_SESSION_HANDLE_INVALID. Such
 *      sessions stay open in the target (and keep the application's login
 *      state there) until the caller calls C_CloseSession on them (which
 *      closes them in the target and returns CKR_SESSION_HANDLE_INVALID),
 *      C_CloseAllSessions or C_Finalize. Sessions opened later work. The
 *      generation of each session is kept in a hash map filled at
 *      C_OpenSession.
 *   5a. reused handles (reuse = 1 before the first C_OpenSession, and
 *      not turned off while sessions are open): C_OpenSession hands out the
 *      lowest free number from 1 up, not the target's handle, and every
 *      function taking a session translates it back, so a number closed
 *      is the next one opened, as on modules that reuse handles at once.
 *      An unknown number gives CKR_SESSION_HANDLE_INVALID. The number of
 *      an invalidated session (step 5) is free too, as on a module that
 *      lost the session: the next C_OpenSession may return it (and closes
 *      the old target session), so closing that number afterwards closes
 *      the new session.
 *   6a. hidden mechanism: C_GetMechanismList leaves hide_mech - 1 out,
 *      C_GetMechanismInfo, C_EncryptInit, C_DecryptInit and C_GenerateKey
 *      with it return CKR_MECHANISM_INVALID (a module without, e.g.,
 *      CKM_AES_GCM).
 *   6. HSM-generated IV mode, C_EncryptInit with CKM_AES_GCM only: the
 *      caller's CK_GCM_PARAMS must carry a 12-byte IV of zero bytes (else
 *      CKR_MECHANISM_PARAM_INVALID, like AWS CloudHSM); the module draws 12
 *      bytes from the target's C_GenerateRandom, writes them into the
 *      caller's pIv buffer and passes the caller's parameters on, so the
 *      caller reads the IV back after the call. If the target refuses
 *      C_EncryptInit the buffer is zeroed again (a retry is not refused).
 *   7. forward to the target.
 *
 * Thread safety: the control words are accessed with atomics, the session
 * map has a mutex, C_Initialize/C_Finalize/C_GetFunctionList serialise on
 * another. The target stays loaded from the first C_Initialize until this
 * module is unloaded; control files mapped earlier stay mapped until then
 * too (a call racing with C_Initialize never touches unmapped memory).
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CK_PTR *
#define CK_DECLARE_FUNCTION(returnType, name) \
	__attribute__((visibility("default"))) returnType name
#define CK_DECLARE_FUNCTION_POINTER(returnType, name) returnType(*name)
#define CK_CALLBACK_FUNCTION(returnType, name) returnType(*name)
#ifndef NULL_PTR
#define NULL_PTR 0
#endif
#include "pkcs11.h"

/* ---------------------------------------------------------------- layout */

#define FM_MAGIC 0x31304c5254434d46ULL /* "FMCTRL01" little-endian */
#define FM_VERSION 1u
#define FM_HEADER 64

struct fm_slot {
	uint64_t fail_rv;
	int64_t fail_count;
	uint64_t delay_ns;
	uint64_t calls;
};

struct fm_ctl {
	uint64_t magic;
	uint32_t version;
	uint32_t nslots;
	uint64_t session_gen;
	uint64_t removed;
	uint64_t hsm_iv;
	uint64_t hide_mech;
	uint64_t reuse;
	uint64_t reserved[1];
	struct fm_slot slot[];
};

_Static_assert(offsetof(struct fm_ctl, session_gen) == 16, "layout");
_Static_assert(offsetof(struct fm_ctl, hsm_iv) == 32, "layout");
_Static_assert(offsetof(struct fm_ctl, hide_mech) == 40, "layout");
_Static_assert(offsetof(struct fm_ctl, reuse) == 48, "layout");
_Static_assert(offsetof(struct fm_ctl, slot) == FM_HEADER, "layout");
_Static_assert(sizeof(struct fm_slot) == 32, "layout");

/* Stable function ids: slot index. Keep in sync with funcNames in
 * faultmod.go (a test compares the two tables). */
enum {
	FN_ANY = 0,
	FN_C_Initialize, FN_C_Finalize, FN_C_GetInfo, FN_C_GetFunctionList,
	FN_C_GetSlotList, FN_C_GetSlotInfo, FN_C_GetTokenInfo,
	FN_C_GetMechanismList, FN_C_GetMechanismInfo, FN_C_InitToken,
	FN_C_InitPIN, FN_C_SetPIN, FN_C_OpenSession, FN_C_CloseSession,
	FN_C_CloseAllSessions, FN_C_GetSessionInfo, FN_C_GetOperationState,
	FN_C_SetOperationState, FN_C_Login, FN_C_Logout, FN_C_CreateObject,
	FN_C_CopyObject, FN_C_DestroyObject, FN_C_GetObjectSize,
	FN_C_GetAttributeValue, FN_C_SetAttributeValue, FN_C_FindObjectsInit,
	FN_C_FindObjects, FN_C_FindObjectsFinal, FN_C_EncryptInit, FN_C_Encrypt,
	FN_C_EncryptUpdate, FN_C_EncryptFinal, FN_C_DecryptInit, FN_C_Decrypt,
	FN_C_DecryptUpdate, FN_C_DecryptFinal, FN_C_DigestInit, FN_C_Digest,
	FN_C_DigestUpdate, FN_C_DigestKey, FN_C_DigestFinal, FN_C_SignInit,
	FN_C_Sign, FN_C_SignUpdate, FN_C_SignFinal, FN_C_SignRecoverInit,
	FN_C_SignRecover, FN_C_VerifyInit, FN_C_Verify, FN_C_VerifyUpdate,
	FN_C_VerifyFinal, FN_C_VerifyRecoverInit, FN_C_VerifyRecover,
	FN_C_DigestEncryptUpdate, FN_C_DecryptDigestUpdate,
	FN_C_SignEncryptUpdate, FN_C_DecryptVerifyUpdate, FN_C_GenerateKey,
	FN_C_GenerateKeyPair, FN_C_WrapKey, FN_C_UnwrapKey, FN_C_DeriveKey,
	FN_C_SeedRandom, FN_C_GenerateRandom, FN_C_GetFunctionStatus,
	FN_C_CancelFunction, FN_C_WaitForSlotEvent,
	FM_NFUNCS
};

/* fm_names[id] is the name of function id; read by the Go test. */
static const char *const fm_names[FM_NFUNCS] = {
	"*",
	"C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList",
	"C_GetSlotList", "C_GetSlotInfo", "C_GetTokenInfo",
	"C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken",
	"C_InitPIN", "C_SetPIN", "C_OpenSession", "C_CloseSession",
	"C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
	"C_SetOperationState", "C_Login", "C_Logout", "C_CreateObject",
	"C_CopyObject", "C_DestroyObject", "C_GetObjectSize",
	"C_GetAttributeValue", "C_SetAttributeValue", "C_FindObjectsInit",
	"C_FindObjects", "C_FindObjectsFinal", "C_EncryptInit", "C_Encrypt",
	"C_EncryptUpdate", "C_EncryptFinal", "C_DecryptInit", "C_Decrypt",
	"C_DecryptUpdate", "C_DecryptFinal", "C_DigestInit", "C_Digest",
	"C_DigestUpdate", "C_DigestKey", "C_DigestFinal", "C_SignInit",
	"C_Sign", "C_SignUpdate", "C_SignFinal", "C_SignRecoverInit",
	"C_SignRecover", "C_VerifyInit", "C_Verify", "C_VerifyUpdate",
	"C_VerifyFinal", "C_VerifyRecoverInit", "C_VerifyRecover",
	"C_DigestEncryptUpdate", "C_DecryptDigestUpdate",
	"C_SignEncryptUpdate", "C_DecryptVerifyUpdate", "C_GenerateKey",
	"C_GenerateKeyPair", "C_WrapKey", "C_UnwrapKey", "C_DeriveKey",
	"C_SeedRandom", "C_GenerateRandom", "C_GetFunctionStatus",
	"C_CancelFunction", "C_WaitForSlotEvent",
};

/* ----------------------------------------------------------------- state */

static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;

static CK_FUNCTION_LIST_PTR tgt;  /* target's list; atomic access */
static void *tgt_lib;             /* dlopen handle of the target */
static struct fm_ctl *ctl;        /* current control mapping; atomic access */
static char *ctl_path;            /* path of the current mapping */

struct old_map {
	void *addr;
	size_t len;
	struct old_map *next;
};
static struct old_map *maps; /* every mapping made, unmapped at unload */

static CK_FUNCTION_LIST fm_list; /* ours, filled below */

static inline CK_FUNCTION_LIST_PTR target(void)
{
	return __atomic_load_n(&tgt, __ATOMIC_ACQUIRE);
}

static inline struct fm_ctl *control(void)
{
	return __atomic_load_n(&ctl, __ATOMIC_ACQUIRE);
}

static int fm_quiet; /* set while mapping lazily: C_Initialize reports */

static void fm_log(const char *fmt, const char *a, const char *b)
{
	if (fm_quiet)
		return;
	fprintf(stderr, "faultmod: ");
	fprintf(stderr, fmt, a, b);
	fputc('\n', stderr);
}

/* map_control maps the control file named by $FAULTMOD_CONTROL, or clears
 * the mapping if it is unset. Caller holds init_mu. Returns CKR_OK or
 * CKR_GENERAL_ERROR. */
static CK_RV map_control(void)
{
	const char *path = getenv("FAULTMOD_CONTROL");
	if (path == NULL || *path == '\0') {
		__atomic_store_n(&ctl, NULL, __ATOMIC_RELEASE);
		free(ctl_path);
		ctl_path = NULL;
		return CKR_OK;
	}
	if (ctl_path != NULL && strcmp(ctl_path, path) == 0 && control() != NULL)
		return CKR_OK;

	int fd = open(path, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		fm_log("cannot open control file %s: %s", path, strerror(errno));
		return CKR_GENERAL_ERROR;
	}
	struct stat st;
	if (fstat(fd, &st) != 0 || st.st_size < FM_HEADER) {
		close(fd);
		fm_log("control file %s is too short%s", path, "");
		return CKR_GENERAL_ERROR;
	}
	size_t len = (size_t)st.st_size;
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (p == MAP_FAILED) {
		fm_log("cannot map control file %s: %s", path, strerror(errno));
		return CKR_GENERAL_ERROR;
	}
	struct fm_ctl *c = p;
	uint64_t magic = __atomic_load_n(&c->magic, __ATOMIC_ACQUIRE);
	if (magic != FM_MAGIC || c->version != FM_VERSION ||
	    c->nslots < FM_NFUNCS ||
	    len < FM_HEADER + (size_t)c->nslots * sizeof(struct fm_slot)) {
		munmap(p, len);
		fm_log("control file %s has a wrong magic, version or size "
		       "(module and Go package out of step?)%s", path, "");
		return CKR_GENERAL_ERROR;
	}
	struct old_map *m = malloc(sizeof *m);
	char *dup = strdup(path);
	if (m == NULL || dup == NULL) {
		free(m);
		free(dup);
		munmap(p, len);
		return CKR_HOST_MEMORY;
	}
	m->addr = p;
	m->len = len;
	m->next = maps;
	maps = m;
	free(ctl_path);
	ctl_path = dup;
	__atomic_store_n(&ctl, c, __ATOMIC_RELEASE);
	return CKR_OK;
}

/* load_target dlopens the target module once. Caller holds init_mu. */
static CK_RV load_target(void)
{
	if (target() != NULL)
		return CKR_OK;
	const char *path = getenv("FAULTMOD_TARGET");
#ifdef FAULTMOD_DEFAULT_TARGET
	if (path == NULL || *path == '\0')
		path = FAULTMOD_DEFAULT_TARGET;
#endif
	if (path == NULL || *path == '\0') {
		fm_log("FAULTMOD_TARGET is not set%s%s", "", "");
		return CKR_GENERAL_ERROR;
	}
	void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
	if (lib == NULL) {
		fm_log("cannot load target %s: %s", path, dlerror());
		return CKR_GENERAL_ERROR;
	}
	CK_C_GetFunctionList gfl;
	/* POSIX's way to turn dlsym's void * into a function pointer. */
	*(void **)&gfl = dlsym(lib, "C_GetFunctionList");
	CK_FUNCTION_LIST_PTR list = NULL;
	if (gfl == NULL || gfl(&list) != CKR_OK || list == NULL) {
		dlclose(lib);
		fm_log("target %s has no usable C_GetFunctionList%s", path, "");
		return CKR_GENERAL_ERROR;
	}
	if (list == &fm_list || list->C_Initialize == C_Initialize) {
		/* The target's symbols were bound to ours (we were loaded
		 * RTLD_GLOBAL, or the target is this module): forwarding would
		 * recurse forever. */
		dlclose(lib);
		fm_log("target %s resolves to faultmod itself%s", path, "");
		return CKR_GENERAL_ERROR;
	}
	tgt_lib = lib;
	__atomic_store_n(&tgt, list, __ATOMIC_RELEASE);
	return CKR_OK;
}

__attribute__((destructor)) static void fm_unload(void)
{
	__atomic_store_n(&ctl, NULL, __ATOMIC_RELEASE);
	__atomic_store_n(&tgt, NULL, __ATOMIC_RELEASE);
	while (maps != NULL) {
		struct old_map *m = maps;
		maps = m->next;
		munmap(m->addr, m->len);
		free(m);
	}
	free(ctl_path);
	ctl_path = NULL;
	if (tgt_lib != NULL) {
		dlclose(tgt_lib);
		tgt_lib = NULL;
	}
}

/* ----------------------------------------------------------- session map */

#define SM_BUCKETS 1024

struct sm_node {
	CK_SESSION_HANDLE h;
	CK_SLOT_ID slot;
	uint64_t gen;
	struct sm_node *next;
};

static pthread_mutex_t sm_mu = PTHREAD_MUTEX_INITIALIZER;
static struct sm_node *sm_tab[SM_BUCKETS];

static inline size_t sm_hash(CK_SESSION_HANDLE h)
{
	uint64_t x = (uint64_t)h * 0x9e3779b97f4a7c15ULL;
	return (size_t)(x >> 54) & (SM_BUCKETS - 1);
}

static void sm_put(CK_SESSION_HANDLE h, CK_SLOT_ID slot, uint64_t gen)
{
	size_t b = sm_hash(h);
	pthread_mutex_lock(&sm_mu);
	struct sm_node *n;
	for (n = sm_tab[b]; n != NULL; n = n->next)
		if (n->h == h)
			break;
	if (n == NULL && (n = malloc(sizeof *n)) != NULL) {
		n->h = h;
		n->next = sm_tab[b];
		sm_tab[b] = n;
	}
	if (n != NULL) { /* out of memory: the session is simply not tracked */
		n->slot = slot;
		n->gen = gen;
	}
	pthread_mutex_unlock(&sm_mu);
}

/* sm_gen reports the generation recorded for h; 0 if h is not tracked. */
static int sm_gen(CK_SESSION_HANDLE h, uint64_t *gen)
{
	int found = 0;
	size_t b = sm_hash(h);
	pthread_mutex_lock(&sm_mu);
	for (struct sm_node *n = sm_tab[b]; n != NULL; n = n->next) {
		if (n->h == h) {
			*gen = n->gen;
			found = 1;
			break;
		}
	}
	pthread_mutex_unlock(&sm_mu);
	return found;
}

static void sm_del(CK_SESSION_HANDLE h)
{
	size_t b = sm_hash(h);
	pthread_mutex_lock(&sm_mu);
	for (struct sm_node **pp = &sm_tab[b]; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->h == h) {
			struct sm_node *n = *pp;
			*pp = n->next;
			free(n);
			break;
		}
	}
	pthread_mutex_unlock(&sm_mu);
}

/* sm_del_slot forgets the sessions of slot (all sessions if all). */
static void sm_del_slot(CK_SLOT_ID slot, int all)
{
	pthread_mutex_lock(&sm_mu);
	for (size_t b = 0; b < SM_BUCKETS; b++) {
		struct sm_node **pp = &sm_tab[b];
		while (*pp != NULL) {
			struct sm_node *n = *pp;
			if (all || n->slot == slot) {
				*pp = n->next;
				free(n);
			} else {
				pp = &n->next;
			}
		}
	}
	pthread_mutex_unlock(&sm_mu);
}

/* ------------------------------------------------ reused handle numbers */

#define VT_MAX 4096

static pthread_mutex_t vt_mu = PTHREAD_MUTEX_INITIALIZER;
static CK_SESSION_HANDLE vt_tab[VT_MAX + 1]; /* virtual -> target; 0 free */

static inline int reuse_on(void)
{
	struct fm_ctl *c = control();
	return c != NULL && __atomic_load_n(&c->reuse, __ATOMIC_ACQUIRE) != 0;
}

static int stale(CK_SESSION_HANDLE h);

/* vt_alloc maps target handle th to the lowest free virtual number. The
 * number of an invalidated session counts as free, as on a module that
 * lost the session: its target session is closed and the number reused. */
static CK_SESSION_HANDLE vt_alloc(CK_SESSION_HANDLE th)
{
	CK_SESSION_HANDLE v = 0;
	pthread_mutex_lock(&vt_mu);
	for (CK_SESSION_HANDLE i = 1; i <= VT_MAX; i++) {
		if (vt_tab[i] != 0 && stale(i)) {
			CK_FUNCTION_LIST_PTR t = target();
			if (t != NULL)
				(void)t->C_CloseSession(vt_tab[i]);
			vt_tab[i] = 0;
		}
		if (vt_tab[i] == 0) {
			vt_tab[i] = th;
			v = i;
			break;
		}
	}
	pthread_mutex_unlock(&vt_mu);
	return v;
}

/* vt_get returns the target handle of v, 0 if v is not open. */
static CK_SESSION_HANDLE vt_get(CK_SESSION_HANDLE v)
{
	CK_SESSION_HANDLE th = 0;
	pthread_mutex_lock(&vt_mu);
	if (v >= 1 && v <= VT_MAX)
		th = vt_tab[v];
	pthread_mutex_unlock(&vt_mu);
	return th;
}

static void vt_free(CK_SESSION_HANDLE v)
{
	pthread_mutex_lock(&vt_mu);
	if (v >= 1 && v <= VT_MAX)
		vt_tab[v] = 0;
	pthread_mutex_unlock(&vt_mu);
}

static void vt_clear(void)
{
	pthread_mutex_lock(&vt_mu);
	memset(vt_tab, 0, sizeof vt_tab);
	pthread_mutex_unlock(&vt_mu);
}

/* hidden reports whether mechanism type m is hidden (step 6a). */
static inline int hidden(CK_MECHANISM_TYPE m)
{
	struct fm_ctl *c = control();
	uint64_t h = c == NULL ? 0 : __atomic_load_n(&c->hide_mech, __ATOMIC_ACQUIRE);
	return h != 0 && h - 1 == (uint64_t)m;
}

/* ---------------------------------------------------------------- faults */

static void sleep_ns(uint64_t ns)
{
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += (time_t)(ns / 1000000000ULL);
	deadline.tv_nsec += (long)(ns % 1000000000ULL);
	if (deadline.tv_nsec >= 1000000000L) {
		deadline.tv_sec++;
		deadline.tv_nsec -= 1000000000L;
	}
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR)
		;
}

/* take_fail consumes one injected failure of slot s, if any. */
static int take_fail(struct fm_slot *s, CK_RV *rv)
{
	int64_t n = __atomic_load_n(&s->fail_count, __ATOMIC_ACQUIRE);
	while (n != 0) {
		if (n < 0 || __atomic_compare_exchange_n(&s->fail_count, &n, n - 1, 0,
							 __ATOMIC_ACQ_REL,
							 __ATOMIC_ACQUIRE)) {
			CK_RV r = (CK_RV)__atomic_load_n(&s->fail_rv, __ATOMIC_ACQUIRE);
			if (r == CKR_OK)
				return 0;
			*rv = r;
			return 1;
		}
	}
	return 0;
}

static inline int excluded(int id)
{
	return id == FN_C_Initialize || id == FN_C_Finalize || id == FN_C_GetFunctionList;
}

/* pre runs steps 1-3 (count, delay, injected failure) for function id and
 * checks that the target is loaded. *injected is set when the returned
 * error was injected. */
static CK_RV pre(int id, int *injected)
{
	struct fm_ctl *c = control();
	*injected = 0;
	if (c != NULL) {
		struct fm_slot *s = &c->slot[id], *any = &c->slot[FN_ANY];
		int all = !excluded(id);
		__atomic_fetch_add(&s->calls, 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&any->calls, 1, __ATOMIC_RELAXED);
		uint64_t d = __atomic_load_n(&s->delay_ns, __ATOMIC_RELAXED);
		if (all)
			d += __atomic_load_n(&any->delay_ns, __ATOMIC_RELAXED);
		if (d != 0)
			sleep_ns(d);
		CK_RV rv;
		if (take_fail(s, &rv) || (all && take_fail(any, &rv))) {
			*injected = 1;
			return rv;
		}
	}
	if (target() == NULL)
		return CKR_CRYPTOKI_NOT_INITIALIZED;
	return CKR_OK;
}

static inline int token_removed(void)
{
	struct fm_ctl *c = control();
	return c != NULL && __atomic_load_n(&c->removed, __ATOMIC_ACQUIRE) != 0;
}

static inline uint64_t current_gen(void)
{
	struct fm_ctl *c = control();
	return c == NULL ? 0 : __atomic_load_n(&c->session_gen, __ATOMIC_ACQUIRE);
}

static int stale(CK_SESSION_HANDLE h)
{
	uint64_t now = current_gen(), g;
	return now != 0 && sm_gen(h, &g) && g < now;
}

/* Operation kinds for ending the target's active operation. */
enum op { OP_NONE, OP_ENCRYPT, OP_DECRYPT, OP_DIGEST, OP_SIGN, OP_VERIFY };

/* end_op ends the target's active operation of kind op on h, as a token
 * does when a call of that operation fails. Best effort. */
static void end_op(CK_SESSION_HANDLE h, enum op op)
{
	CK_FUNCTION_LIST_PTR t = target();
	if (t == NULL)
		return;
	CK_RV (*fin)(CK_SESSION_HANDLE, CK_BYTE_PTR, CK_ULONG_PTR) = NULL;
	switch (op) {
	case OP_ENCRYPT: fin = t->C_EncryptFinal; break;
	case OP_DECRYPT: fin = t->C_DecryptFinal; break;
	case OP_DIGEST: fin = t->C_DigestFinal; break;
	case OP_SIGN: fin = t->C_SignFinal; break;
	case OP_VERIFY: {
		/* A wrong signature ends a verification. */
		CK_BYTE sig[512] = {0};
		(void)t->C_VerifyFinal(h, sig, sizeof sig);
		return;
	}
	case OP_NONE: return;
	}
	CK_ULONG len = 0;
	if (fin(h, NULL, &len) != CKR_OK) /* an error already ended it */
		return;
	CK_BYTE small[256];
	CK_BYTE *buf = len <= sizeof small ? small : malloc(len);
	if (buf == NULL)
		return;
	(void)fin(h, buf, &len);
	if (buf != small)
		free(buf);
}

/* pre_session runs steps 1-5 for a function taking a session handle. */
static CK_RV pre_session(int id, CK_SESSION_HANDLE h, enum op op)
{
	int injected;
	CK_RV rv = pre(id, &injected);
	if (rv != CKR_OK) {
		if (injected && op != OP_NONE)
			end_op(reuse_on() ? vt_get(h) : h, op);
		return rv;
	}
	if (token_removed())
		return CKR_DEVICE_REMOVED;
	if (stale(h))
		return CKR_SESSION_HANDLE_INVALID;
	return CKR_OK;
}

/* pre_slot runs steps 1-4 for a slot function that a removed token
 * refuses with CKR_TOKEN_NOT_PRESENT. */
static CK_RV pre_slot(int id)
{
	int injected;
	CK_RV rv = pre(id, &injected);
	if (rv != CKR_OK)
		return rv;
	if (token_removed())
		return CKR_TOKEN_NOT_PRESENT;
	return CKR_OK;
}

static CK_RV pre_plain(int id)
{
	int injected;
	return pre(id, &injected);
}

#define T (target())

#define SESSION(id, h, op)                                     \
	do {                                                   \
		CK_RV rv_ = pre_session(FN_##id, (h), (op));   \
		if (rv_ != CKR_OK)                             \
			return rv_;                            \
		if (reuse_on()) {                              \
			(h) = vt_get(h);                       \
			if ((h) == 0)                          \
				return CKR_SESSION_HANDLE_INVALID; \
		}                                              \
	} while (0)

#define PLAIN(id)                                  \
	do {                                       \
		CK_RV rv_ = pre_plain(FN_##id);    \
		if (rv_ != CKR_OK)                 \
			return rv_;                \
	} while (0)

#define SLOT(id)                                   \
	do {                                       \
		CK_RV rv_ = pre_slot(FN_##id);     \
		if (rv_ != CKR_OK)                 \
			return rv_;                \
	} while (0)

/* ------------------------------------------------------ general purpose */

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
	pthread_mutex_lock(&init_mu);
	int injected = 0;
	CK_RV rv = map_control();
	if (rv == CKR_OK)
		rv = pre(FN_C_Initialize, &injected);
	if (!injected && (rv == CKR_OK || rv == CKR_CRYPTOKI_NOT_INITIALIZED)) {
		/* pre reports an unloaded target; loading it is our job. */
		rv = load_target();
		if (rv == CKR_OK) {
			rv = T->C_Initialize(pInitArgs);
			if (rv == CKR_OK) {
				sm_del_slot(0, 1);
				vt_clear();
			}
		}
	}
	pthread_mutex_unlock(&init_mu);
	return rv;
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
	pthread_mutex_lock(&init_mu);
	CK_RV rv = pre_plain(FN_C_Finalize);
	if (rv == CKR_OK) {
		rv = T->C_Finalize(pReserved);
		if (rv == CKR_OK) {
			sm_del_slot(0, 1);
			vt_clear();
		}
	}
	pthread_mutex_unlock(&init_mu);
	return rv;
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
	PLAIN(C_GetInfo);
	return T->C_GetInfo(pInfo);
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
	pthread_mutex_lock(&init_mu);
	if (control() == NULL) {
		fm_quiet = 1; /* lazily; C_Initialize reports errors */
		(void)map_control();
		fm_quiet = 0;
	}
	pthread_mutex_unlock(&init_mu);
	int injected;
	CK_RV rv = pre(FN_C_GetFunctionList, &injected);
	if (injected)
		return rv;
	if (ppFunctionList == NULL)
		return CKR_ARGUMENTS_BAD;
	*ppFunctionList = &fm_list;
	return CKR_OK;
}

/* ------------------------------------------------- slot and token mgmt */

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
	PLAIN(C_GetSlotList);
	if (tokenPresent && token_removed()) {
		if (pulCount == NULL)
			return CKR_ARGUMENTS_BAD;
		*pulCount = 0;
		return CKR_OK;
	}
	return T->C_GetSlotList(tokenPresent, pSlotList, pulCount);
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
	PLAIN(C_GetSlotInfo);
	CK_RV rv = T->C_GetSlotInfo(slotID, pInfo);
	if (rv == CKR_OK && pInfo != NULL && token_removed())
		pInfo->flags &= ~(CK_FLAGS)CKF_TOKEN_PRESENT;
	return rv;
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
	SLOT(C_GetTokenInfo);
	return T->C_GetTokenInfo(slotID, pInfo);
}

CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount)
{
	SLOT(C_GetMechanismList);
	struct fm_ctl *c = control();
	if (c == NULL || __atomic_load_n(&c->hide_mech, __ATOMIC_ACQUIRE) == 0 || pulCount == NULL)
		return T->C_GetMechanismList(slotID, pMechanismList, pulCount);
	/* Fetch the whole list, leave the hidden mechanism out, answer. */
	CK_ULONG n = 0;
	CK_RV rv = T->C_GetMechanismList(slotID, NULL, &n);
	if (rv != CKR_OK)
		return rv;
	CK_MECHANISM_TYPE *all = calloc(n + 1, sizeof *all);
	if (all == NULL)
		return CKR_HOST_MEMORY;
	rv = T->C_GetMechanismList(slotID, all, &n);
	CK_ULONG k = 0;
	for (CK_ULONG i = 0; rv == CKR_OK && i < n; i++)
		if (!hidden(all[i]))
			all[k++] = all[i];
	if (rv == CKR_OK && pMechanismList != NULL) {
		if (*pulCount < k)
			rv = CKR_BUFFER_TOO_SMALL;
		else
			memcpy(pMechanismList, all, k * sizeof *all);
	}
	if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL)
		*pulCount = k;
	free(all);
	return rv;
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
	SLOT(C_GetMechanismInfo);
	if (hidden(type))
		return CKR_MECHANISM_INVALID;
	return T->C_GetMechanismInfo(slotID, type, pInfo);
}

CK_RV C_InitToken(CK_SLOT_ID slotID, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, CK_UTF8CHAR_PTR pLabel)
{
	SLOT(C_InitToken);
	return T->C_InitToken(slotID, pPin, ulPinLen, pLabel);
}

CK_RV C_InitPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	SESSION(C_InitPIN, hSession, OP_NONE);
	return T->C_InitPIN(hSession, pPin, ulPinLen);
}

CK_RV C_SetPIN(CK_SESSION_HANDLE hSession, CK_UTF8CHAR_PTR pOldPin, CK_ULONG ulOldLen, CK_UTF8CHAR_PTR pNewPin, CK_ULONG ulNewLen)
{
	SESSION(C_SetPIN, hSession, OP_NONE);
	return T->C_SetPIN(hSession, pOldPin, ulOldLen, pNewPin, ulNewLen);
}

/* ---------------------------------------------------- session management */

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
	SLOT(C_OpenSession);
	/* Read the generation before opening: a session opened while
	 * InvalidateSessions runs counts as old, never the reverse. */
	uint64_t gen = current_gen();
	CK_RV rv = T->C_OpenSession(slotID, flags, pApplication, Notify, phSession);
	if (rv == CKR_OK && phSession != NULL && reuse_on()) {
		CK_SESSION_HANDLE v = vt_alloc(*phSession);
		if (v == 0) {
			T->C_CloseSession(*phSession);
			return CKR_SESSION_COUNT;
		}
		*phSession = v;
	}
	if (rv == CKR_OK && phSession != NULL)
		sm_put(*phSession, slotID, gen);
	return rv;
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
	int injected;
	CK_RV rv = pre(FN_C_CloseSession, &injected);
	if (rv != CKR_OK)
		return rv;
	/* Closed in the target even when removed or invalidated, so nothing
	 * leaks; the caller still sees the fault. */
	CK_RV fault = CKR_OK;
	if (token_removed())
		fault = CKR_DEVICE_REMOVED;
	else if (stale(hSession))
		fault = CKR_SESSION_HANDLE_INVALID;
	CK_SESSION_HANDLE th = hSession;
	int virt = reuse_on();
	if (virt && (th = vt_get(hSession)) == 0)
		return CKR_SESSION_HANDLE_INVALID;
	rv = T->C_CloseSession(th);
	if (rv == CKR_OK || fault != CKR_OK) {
		sm_del(hSession);
		if (virt)
			vt_free(hSession);
	}
	return fault != CKR_OK ? fault : rv;
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
	PLAIN(C_CloseAllSessions);
	CK_RV rv = T->C_CloseAllSessions(slotID);
	if (rv == CKR_OK) {
		sm_del_slot(slotID, 0);
		vt_clear(); /* one token behind this module */
	}
	return rv;
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
	SESSION(C_GetSessionInfo, hSession, OP_NONE);
	return T->C_GetSessionInfo(hSession, pInfo);
}

CK_RV C_GetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG_PTR pulOperationStateLen)
{
	SESSION(C_GetOperationState, hSession, OP_NONE);
	return T->C_GetOperationState(hSession, pOperationState, pulOperationStateLen);
}

CK_RV C_SetOperationState(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pOperationState, CK_ULONG ulOperationStateLen, CK_OBJECT_HANDLE hEncryptionKey, CK_OBJECT_HANDLE hAuthenticationKey)
{
	SESSION(C_SetOperationState, hSession, OP_NONE);
	return T->C_SetOperationState(hSession, pOperationState, ulOperationStateLen, hEncryptionKey, hAuthenticationKey);
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
	SESSION(C_Login, hSession, OP_NONE);
	return T->C_Login(hSession, userType, pPin, ulPinLen);
}

CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
	SESSION(C_Logout, hSession, OP_NONE);
	return T->C_Logout(hSession);
}

/* ----------------------------------------------------- object management */

CK_RV C_CreateObject(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phObject)
{
	SESSION(C_CreateObject, hSession, OP_NONE);
	return T->C_CreateObject(hSession, pTemplate, ulCount, phObject);
}

CK_RV C_CopyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phNewObject)
{
	SESSION(C_CopyObject, hSession, OP_NONE);
	return T->C_CopyObject(hSession, hObject, pTemplate, ulCount, phNewObject);
}

CK_RV C_DestroyObject(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject)
{
	SESSION(C_DestroyObject, hSession, OP_NONE);
	return T->C_DestroyObject(hSession, hObject);
}

CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
	SESSION(C_GetObjectSize, hSession, OP_NONE);
	return T->C_GetObjectSize(hSession, hObject, pulSize);
}

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	SESSION(C_GetAttributeValue, hSession, OP_NONE);
	return T->C_GetAttributeValue(hSession, hObject, pTemplate, ulCount);
}

CK_RV C_SetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	SESSION(C_SetAttributeValue, hSession, OP_NONE);
	return T->C_SetAttributeValue(hSession, hObject, pTemplate, ulCount);
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
	SESSION(C_FindObjectsInit, hSession, OP_NONE);
	return T->C_FindObjectsInit(hSession, pTemplate, ulCount);
}

CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
	SESSION(C_FindObjects, hSession, OP_NONE);
	return T->C_FindObjects(hSession, phObject, ulMaxObjectCount, pulObjectCount);
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
	SESSION(C_FindObjectsFinal, hSession, OP_NONE);
	return T->C_FindObjectsFinal(hSession);
}

/* ------------------------------------------------------------ encryption */

/* hsm_iv_encrypt_init is C_EncryptInit in HSM-generated IV mode for
 * CKM_AES_GCM: see step 6 in the header comment. */
static CK_RV hsm_iv_encrypt_init(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	/* pIv and ulIvLen lead both CK_GCM_PARAMS layouts (with and without
	 * ulIvBits), so only they are read. */
	if (pMechanism->pParameter == NULL ||
	    pMechanism->ulParameterLen < offsetof(CK_GCM_PARAMS, ulIvBits))
		return CKR_MECHANISM_PARAM_INVALID;
	CK_GCM_PARAMS *p = pMechanism->pParameter;
	if (p->pIv == NULL || p->ulIvLen != 12)
		return CKR_MECHANISM_PARAM_INVALID;
	for (CK_ULONG i = 0; i < p->ulIvLen; i++)
		if (p->pIv[i] != 0)
			return CKR_MECHANISM_PARAM_INVALID;
	CK_BYTE iv[12];
	CK_RV rv = T->C_GenerateRandom(hSession, iv, sizeof iv);
	if (rv != CKR_OK)
		return rv;
	memcpy(p->pIv, iv, sizeof iv);
	rv = T->C_EncryptInit(hSession, pMechanism, hKey);
	if (rv != CKR_OK)
		memset(p->pIv, 0, sizeof iv);
	return rv;
}

CK_RV C_EncryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_EncryptInit, hSession, OP_NONE);
	if (pMechanism != NULL && hidden(pMechanism->mechanism))
		return CKR_MECHANISM_INVALID;
	struct fm_ctl *c = control();
	if (c != NULL && pMechanism != NULL && pMechanism->mechanism == CKM_AES_GCM &&
	    __atomic_load_n(&c->hsm_iv, __ATOMIC_ACQUIRE) != 0)
		return hsm_iv_encrypt_init(hSession, pMechanism, hKey);
	return T->C_EncryptInit(hSession, pMechanism, hKey);
}

CK_RV C_Encrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pEncryptedData, CK_ULONG_PTR pulEncryptedDataLen)
{
	SESSION(C_Encrypt, hSession, OP_ENCRYPT);
	return T->C_Encrypt(hSession, pData, ulDataLen, pEncryptedData, pulEncryptedDataLen);
}

CK_RV C_EncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
	SESSION(C_EncryptUpdate, hSession, OP_ENCRYPT);
	return T->C_EncryptUpdate(hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}

CK_RV C_EncryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastEncryptedPart, CK_ULONG_PTR pulLastEncryptedPartLen)
{
	SESSION(C_EncryptFinal, hSession, OP_ENCRYPT);
	return T->C_EncryptFinal(hSession, pLastEncryptedPart, pulLastEncryptedPartLen);
}

/* ------------------------------------------------------------ decryption */

CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_DecryptInit, hSession, OP_NONE);
	if (pMechanism != NULL && hidden(pMechanism->mechanism))
		return CKR_MECHANISM_INVALID;
	return T->C_DecryptInit(hSession, pMechanism, hKey);
}

CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
	SESSION(C_Decrypt, hSession, OP_DECRYPT);
	return T->C_Decrypt(hSession, pEncryptedData, ulEncryptedDataLen, pData, pulDataLen);
}

CK_RV C_DecryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
	SESSION(C_DecryptUpdate, hSession, OP_DECRYPT);
	return T->C_DecryptUpdate(hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}

CK_RV C_DecryptFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pLastPart, CK_ULONG_PTR pulLastPartLen)
{
	SESSION(C_DecryptFinal, hSession, OP_DECRYPT);
	return T->C_DecryptFinal(hSession, pLastPart, pulLastPartLen);
}

/* -------------------------------------------------------- message digest */

CK_RV C_DigestInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism)
{
	SESSION(C_DigestInit, hSession, OP_NONE);
	return T->C_DigestInit(hSession, pMechanism);
}

CK_RV C_Digest(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
	SESSION(C_Digest, hSession, OP_DIGEST);
	return T->C_Digest(hSession, pData, ulDataLen, pDigest, pulDigestLen);
}

CK_RV C_DigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	SESSION(C_DigestUpdate, hSession, OP_DIGEST);
	return T->C_DigestUpdate(hSession, pPart, ulPartLen);
}

CK_RV C_DigestKey(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_DigestKey, hSession, OP_DIGEST);
	return T->C_DigestKey(hSession, hKey);
}

CK_RV C_DigestFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pDigest, CK_ULONG_PTR pulDigestLen)
{
	SESSION(C_DigestFinal, hSession, OP_DIGEST);
	return T->C_DigestFinal(hSession, pDigest, pulDigestLen);
}

/* ---------------------------------------------------- signing and MACing */

CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_SignInit, hSession, OP_NONE);
	return T->C_SignInit(hSession, pMechanism, hKey);
}

CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	SESSION(C_Sign, hSession, OP_SIGN);
	return T->C_Sign(hSession, pData, ulDataLen, pSignature, pulSignatureLen);
}

CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	SESSION(C_SignUpdate, hSession, OP_SIGN);
	return T->C_SignUpdate(hSession, pPart, ulPartLen);
}

CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	SESSION(C_SignFinal, hSession, OP_SIGN);
	return T->C_SignFinal(hSession, pSignature, pulSignatureLen);
}

CK_RV C_SignRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_SignRecoverInit, hSession, OP_NONE);
	return T->C_SignRecoverInit(hSession, pMechanism, hKey);
}

CK_RV C_SignRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
	SESSION(C_SignRecover, hSession, OP_NONE);
	return T->C_SignRecover(hSession, pData, ulDataLen, pSignature, pulSignatureLen);
}

/* -------------------------------------------------------- verification */

CK_RV C_VerifyInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_VerifyInit, hSession, OP_NONE);
	return T->C_VerifyInit(hSession, pMechanism, hKey);
}

CK_RV C_Verify(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
	SESSION(C_Verify, hSession, OP_VERIFY);
	return T->C_Verify(hSession, pData, ulDataLen, pSignature, ulSignatureLen);
}

CK_RV C_VerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
	SESSION(C_VerifyUpdate, hSession, OP_VERIFY);
	return T->C_VerifyUpdate(hSession, pPart, ulPartLen);
}

CK_RV C_VerifyFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen)
{
	SESSION(C_VerifyFinal, hSession, OP_VERIFY);
	return T->C_VerifyFinal(hSession, pSignature, ulSignatureLen);
}

CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
	SESSION(C_VerifyRecoverInit, hSession, OP_NONE);
	return T->C_VerifyRecoverInit(hSession, pMechanism, hKey);
}

CK_RV C_VerifyRecover(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG ulSignatureLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
	SESSION(C_VerifyRecover, hSession, OP_NONE);
	return T->C_VerifyRecover(hSession, pSignature, ulSignatureLen, pData, pulDataLen);
}

/* ------------------------------------------ dual-function crypto operations */

CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
	SESSION(C_DigestEncryptUpdate, hSession, OP_NONE);
	return T->C_DigestEncryptUpdate(hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}

CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
	SESSION(C_DecryptDigestUpdate, hSession, OP_NONE);
	return T->C_DecryptDigestUpdate(hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}

CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen, CK_BYTE_PTR pEncryptedPart, CK_ULONG_PTR pulEncryptedPartLen)
{
	SESSION(C_SignEncryptUpdate, hSession, OP_NONE);
	return T->C_SignEncryptUpdate(hSession, pPart, ulPartLen, pEncryptedPart, pulEncryptedPartLen);
}

CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedPart, CK_ULONG ulEncryptedPartLen, CK_BYTE_PTR pPart, CK_ULONG_PTR pulPartLen)
{
	SESSION(C_DecryptVerifyUpdate, hSession, OP_NONE);
	return T->C_DecryptVerifyUpdate(hSession, pEncryptedPart, ulEncryptedPartLen, pPart, pulPartLen);
}

/* -------------------------------------------------------- key management */

CK_RV C_GenerateKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount, CK_OBJECT_HANDLE_PTR phKey)
{
	SESSION(C_GenerateKey, hSession, OP_NONE);
	if (pMechanism != NULL && hidden(pMechanism->mechanism))
		return CKR_MECHANISM_INVALID;
	return T->C_GenerateKey(hSession, pMechanism, pTemplate, ulCount, phKey);
}

CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_ATTRIBUTE_PTR pPublicKeyTemplate, CK_ULONG ulPublicKeyAttributeCount, CK_ATTRIBUTE_PTR pPrivateKeyTemplate, CK_ULONG ulPrivateKeyAttributeCount, CK_OBJECT_HANDLE_PTR phPublicKey, CK_OBJECT_HANDLE_PTR phPrivateKey)
{
	SESSION(C_GenerateKeyPair, hSession, OP_NONE);
	return T->C_GenerateKeyPair(hSession, pMechanism, pPublicKeyTemplate, ulPublicKeyAttributeCount, pPrivateKeyTemplate, ulPrivateKeyAttributeCount, phPublicKey, phPrivateKey);
}

CK_RV C_WrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hWrappingKey, CK_OBJECT_HANDLE hKey, CK_BYTE_PTR pWrappedKey, CK_ULONG_PTR pulWrappedKeyLen)
{
	SESSION(C_WrapKey, hSession, OP_NONE);
	return T->C_WrapKey(hSession, pMechanism, hWrappingKey, hKey, pWrappedKey, pulWrappedKeyLen);
}

CK_RV C_UnwrapKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hUnwrappingKey, CK_BYTE_PTR pWrappedKey, CK_ULONG ulWrappedKeyLen, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	SESSION(C_UnwrapKey, hSession, OP_NONE);
	return T->C_UnwrapKey(hSession, pMechanism, hUnwrappingKey, pWrappedKey, ulWrappedKeyLen, pTemplate, ulAttributeCount, phKey);
}

CK_RV C_DeriveKey(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hBaseKey, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulAttributeCount, CK_OBJECT_HANDLE_PTR phKey)
{
	SESSION(C_DeriveKey, hSession, OP_NONE);
	return T->C_DeriveKey(hSession, pMechanism, hBaseKey, pTemplate, ulAttributeCount, phKey);
}

/* ------------------------------------------- random number generation */

CK_RV C_SeedRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSeed, CK_ULONG ulSeedLen)
{
	SESSION(C_SeedRandom, hSession, OP_NONE);
	return T->C_SeedRandom(hSession, pSeed, ulSeedLen);
}

CK_RV C_GenerateRandom(CK_SESSION_HANDLE hSession, CK_BYTE_PTR RandomData, CK_ULONG ulRandomLen)
{
	SESSION(C_GenerateRandom, hSession, OP_NONE);
	return T->C_GenerateRandom(hSession, RandomData, ulRandomLen);
}

/* ------------------------------------ parallel function management (legacy) */

CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE hSession)
{
	SESSION(C_GetFunctionStatus, hSession, OP_NONE);
	return T->C_GetFunctionStatus(hSession);
}

CK_RV C_CancelFunction(CK_SESSION_HANDLE hSession)
{
	SESSION(C_CancelFunction, hSession, OP_NONE);
	return T->C_CancelFunction(hSession);
}

CK_RV C_WaitForSlotEvent(CK_FLAGS flags, CK_SLOT_ID_PTR pSlot, CK_VOID_PTR pRserved)
{
	PLAIN(C_WaitForSlotEvent);
	return T->C_WaitForSlotEvent(flags, pSlot, pRserved);
}

/* ------------------------------------------------------------ our list */

static CK_FUNCTION_LIST fm_list = {
	{ 2, 40 },
	C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList,
	C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo, C_GetMechanismList,
	C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession,
	C_CloseSession, C_CloseAllSessions, C_GetSessionInfo,
	C_GetOperationState, C_SetOperationState, C_Login, C_Logout,
	C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize,
	C_GetAttributeValue, C_SetAttributeValue, C_FindObjectsInit,
	C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt,
	C_EncryptUpdate, C_EncryptFinal, C_DecryptInit, C_Decrypt,
	C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,
	C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign,
	C_SignUpdate, C_SignFinal, C_SignRecoverInit, C_SignRecover,
	C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
	C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate,
	C_DecryptDigestUpdate, C_SignEncryptUpdate, C_DecryptVerifyUpdate,
	C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey,
	C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction,
	C_WaitForSlotEvent,
};

/* fm_name_of is exported for debugging tools (and keeps fm_names used). */
__attribute__((visibility("default"))) const char *faultmod_function_name(int id)
{
	return id >= 0 && id < FM_NFUNCS ? fm_names[id] : NULL;
}
