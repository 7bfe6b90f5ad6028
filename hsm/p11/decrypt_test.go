package p11

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// rssKiB returns the resident set size of the test process.
func rssKiB(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "VmRSS:" {
			n, err := strconv.Atoi(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS in /proc/self/status")
	return 0
}

// Open resolves C_Decrypt itself (miekg/pkcs11's Ctx.Decrypt leaks its C
// buffer on every failed C_Decrypt, direct_unix.go), and the function-list index it
// uses is the module's real C_Decrypt.
func TestDirectDecryptResolved(t *testing.T) {
	tok, _ := newTestToken(t, 1)
	if tok.direct == nil {
		t.Fatal("C_Decrypt not resolved through C_GetFunctionList")
	}
	// NSS softoken exports only C_GetFunctionList; where the module also
	// exports C_Decrypt, the two must agree.
	sym := tok.direct.symbol("C_Decrypt")
	if sym == nil && tok.direct.symbol("C_Initialize") != nil {
		t.Fatalf("the module exports C_Initialize but not C_Decrypt")
	}
	if sym != nil && sym != tok.direct.decryptFn() {
		t.Fatalf("function list C_Decrypt = %p, dlsym(C_Decrypt) = %p", tok.direct.decryptFn(), sym)
	}
}

// Tampered ciphertexts must not leak memory: 2000 failed Opens of 256 KiB
// would leak 500 MiB through the binding's Decrypt.
func TestFailedOpenDoesNotLeak(t *testing.T) {
	if _, err := os.Stat("/proc/self/status"); err != nil {
		if runtime.GOOS == "linux" {
			t.Fatalf("/proc/self/status: %v", err)
		}
		t.Skipf("the memory check reads /proc/self/status, which %s lacks", runtime.GOOS)
	}
	tok, _ := newTestToken(t, 1)
	ctx := testCtx(t)
	id := []byte("leak")
	mustGenerate(t, tok, id)
	iv, sealed, err := tok.Seal(ctx, id, make([]byte, 256<<10), testAAD)
	if err != nil {
		t.Fatal(err)
	}
	sealed[0] ^= 1
	open := func(n int) {
		for range n {
			if _, err := tok.Open(ctx, id, iv, sealed, testAAD); err == nil {
				t.Fatal("tampered ciphertext opened")
			}
		}
	}
	open(200) // warm up the heaps
	before := rssKiB(t)
	open(2000)
	if grew := rssKiB(t) - before; grew > 128<<10 {
		t.Fatalf("RSS grew by %d MiB over 2000 failed Opens of 256 KiB", grew>>10)
	}
}
